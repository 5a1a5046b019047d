import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from sdk.gen.cube.v1 import network_pb2 as _network_pb2
from sdk.gen.cube.v1 import cubelet_pb2 as _cubelet_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SANDBOX_PHASE_UNSPECIFIED: _ClassVar[SandboxPhase]
    SANDBOX_PHASE_CREATING: _ClassVar[SandboxPhase]
    SANDBOX_PHASE_RUNNING: _ClassVar[SandboxPhase]
    SANDBOX_PHASE_PAUSING: _ClassVar[SandboxPhase]
    SANDBOX_PHASE_PAUSED: _ClassVar[SandboxPhase]
    SANDBOX_PHASE_RESUMING: _ClassVar[SandboxPhase]
    SANDBOX_PHASE_KILLING: _ClassVar[SandboxPhase]
    SANDBOX_PHASE_LOST: _ClassVar[SandboxPhase]

class TemplateStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEMPLATE_STATUS_UNSPECIFIED: _ClassVar[TemplateStatus]
    TEMPLATE_STATUS_BUILDING: _ClassVar[TemplateStatus]
    TEMPLATE_STATUS_READY: _ClassVar[TemplateStatus]
    TEMPLATE_STATUS_ERROR: _ClassVar[TemplateStatus]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_READY: _ClassVar[NodeState]
    NODE_STATE_DRAINING: _ClassVar[NodeState]
    NODE_STATE_LOST: _ClassVar[NodeState]

class ApiKeyRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    API_KEY_ROLE_UNSPECIFIED: _ClassVar[ApiKeyRole]
    API_KEY_ROLE_USER: _ClassVar[ApiKeyRole]
    API_KEY_ROLE_ADMIN: _ClassVar[ApiKeyRole]
SANDBOX_PHASE_UNSPECIFIED: SandboxPhase
SANDBOX_PHASE_CREATING: SandboxPhase
SANDBOX_PHASE_RUNNING: SandboxPhase
SANDBOX_PHASE_PAUSING: SandboxPhase
SANDBOX_PHASE_PAUSED: SandboxPhase
SANDBOX_PHASE_RESUMING: SandboxPhase
SANDBOX_PHASE_KILLING: SandboxPhase
SANDBOX_PHASE_LOST: SandboxPhase
TEMPLATE_STATUS_UNSPECIFIED: TemplateStatus
TEMPLATE_STATUS_BUILDING: TemplateStatus
TEMPLATE_STATUS_READY: TemplateStatus
TEMPLATE_STATUS_ERROR: TemplateStatus
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_READY: NodeState
NODE_STATE_DRAINING: NodeState
NODE_STATE_LOST: NodeState
API_KEY_ROLE_UNSPECIFIED: ApiKeyRole
API_KEY_ROLE_USER: ApiKeyRole
API_KEY_ROLE_ADMIN: ApiKeyRole

class Sandbox(_message.Message):
    __slots__ = ("sandbox_id", "template_id", "alias", "client_id", "node_id", "phase", "started_at", "end_at", "metadata", "env_vars", "envd_access_token", "envd_version", "vcpus", "memory_mb", "disk_size_mb", "auto_pause", "auto_resume", "network", "host_address", "proxy_source_address", "traffic_access_token", "phase_deadline", "updated_at", "created_at", "paused_at", "timeout_s", "team_id", "quota_exempt", "lost_reason", "lost_at", "resume_node_id", "transition_owner", "auto_pause_filesystem_only", "paused_filesystem_only", "volume_mounts")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    END_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    ENVD_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENVD_VERSION_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAUSE_FIELD_NUMBER: _ClassVar[int]
    AUTO_RESUME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    HOST_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROXY_SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PHASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_AT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    QUOTA_EXEMPT_FIELD_NUMBER: _ClassVar[int]
    LOST_REASON_FIELD_NUMBER: _ClassVar[int]
    LOST_AT_FIELD_NUMBER: _ClassVar[int]
    RESUME_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_OWNER_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAUSE_FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    VOLUME_MOUNTS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template_id: str
    alias: str
    client_id: str
    node_id: str
    phase: SandboxPhase
    started_at: _timestamp_pb2.Timestamp
    end_at: _timestamp_pb2.Timestamp
    metadata: _containers.ScalarMap[str, str]
    env_vars: _containers.ScalarMap[str, str]
    envd_access_token: str
    envd_version: str
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    auto_pause: bool
    auto_resume: bool
    network: _network_pb2.NetworkPolicy
    host_address: str
    proxy_source_address: str
    traffic_access_token: str
    phase_deadline: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    paused_at: _timestamp_pb2.Timestamp
    timeout_s: int
    team_id: str
    quota_exempt: bool
    lost_reason: str
    lost_at: _timestamp_pb2.Timestamp
    resume_node_id: str
    transition_owner: str
    auto_pause_filesystem_only: bool
    paused_filesystem_only: bool
    volume_mounts: _containers.RepeatedCompositeFieldContainer[_cubelet_pb2.VolumeMount]
    def __init__(self, sandbox_id: _Optional[str] = ..., template_id: _Optional[str] = ..., alias: _Optional[str] = ..., client_id: _Optional[str] = ..., node_id: _Optional[str] = ..., phase: _Optional[_Union[SandboxPhase, str]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., envd_access_token: _Optional[str] = ..., envd_version: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., disk_size_mb: _Optional[int] = ..., auto_pause: bool = ..., auto_resume: bool = ..., network: _Optional[_Union[_network_pb2.NetworkPolicy, _Mapping]] = ..., host_address: _Optional[str] = ..., proxy_source_address: _Optional[str] = ..., traffic_access_token: _Optional[str] = ..., phase_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., paused_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., timeout_s: _Optional[int] = ..., team_id: _Optional[str] = ..., quota_exempt: bool = ..., lost_reason: _Optional[str] = ..., lost_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resume_node_id: _Optional[str] = ..., transition_owner: _Optional[str] = ..., auto_pause_filesystem_only: bool = ..., paused_filesystem_only: bool = ..., volume_mounts: _Optional[_Iterable[_Union[_cubelet_pb2.VolumeMount, _Mapping]]] = ...) -> None: ...

class CreateSandboxRequest(_message.Message):
    __slots__ = ("template", "timeout_s", "metadata", "env_vars", "auto_pause", "auto_resume", "network", "client_id", "auto_pause_filesystem_only", "volume_mounts")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAUSE_FIELD_NUMBER: _ClassVar[int]
    AUTO_RESUME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAUSE_FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    VOLUME_MOUNTS_FIELD_NUMBER: _ClassVar[int]
    template: str
    timeout_s: int
    metadata: _containers.ScalarMap[str, str]
    env_vars: _containers.ScalarMap[str, str]
    auto_pause: bool
    auto_resume: bool
    network: _network_pb2.NetworkPolicy
    client_id: str
    auto_pause_filesystem_only: bool
    volume_mounts: _containers.RepeatedCompositeFieldContainer[SandboxVolumeMount]
    def __init__(self, template: _Optional[str] = ..., timeout_s: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., auto_pause: bool = ..., auto_resume: bool = ..., network: _Optional[_Union[_network_pb2.NetworkPolicy, _Mapping]] = ..., client_id: _Optional[str] = ..., auto_pause_filesystem_only: bool = ..., volume_mounts: _Optional[_Iterable[_Union[SandboxVolumeMount, _Mapping]]] = ...) -> None: ...

class SandboxVolumeMount(_message.Message):
    __slots__ = ("name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class GetSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class ListSandboxRecordsRequest(_message.Message):
    __slots__ = ("metadata", "phases", "limit", "page_token", "ascending", "started_after", "template")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METADATA_FIELD_NUMBER: _ClassVar[int]
    PHASES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ASCENDING_FIELD_NUMBER: _ClassVar[int]
    STARTED_AFTER_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    metadata: _containers.ScalarMap[str, str]
    phases: _containers.RepeatedScalarFieldContainer[SandboxPhase]
    limit: int
    page_token: str
    ascending: bool
    started_after: _timestamp_pb2.Timestamp
    template: str
    def __init__(self, metadata: _Optional[_Mapping[str, str]] = ..., phases: _Optional[_Iterable[_Union[SandboxPhase, str]]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., ascending: bool = ..., started_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., template: _Optional[str] = ...) -> None: ...

class ListSandboxRecordsResponse(_message.Message):
    __slots__ = ("sandboxes", "next_page_token")
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[Sandbox]
    next_page_token: str
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[Sandbox, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class KillSandboxRecordRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class KillSandboxRecordResponse(_message.Message):
    __slots__ = ("killed",)
    KILLED_FIELD_NUMBER: _ClassVar[int]
    killed: bool
    def __init__(self, killed: bool = ...) -> None: ...

class SetSandboxTimeoutRequest(_message.Message):
    __slots__ = ("sandbox_id", "timeout_s", "extend_only")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    EXTEND_ONLY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    timeout_s: int
    extend_only: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., timeout_s: _Optional[int] = ..., extend_only: bool = ...) -> None: ...

class PauseSandboxRecordRequest(_message.Message):
    __slots__ = ("sandbox_id", "filesystem_only", "require_healthy_guest")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_HEALTHY_GUEST_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    filesystem_only: bool
    require_healthy_guest: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., filesystem_only: bool = ..., require_healthy_guest: bool = ...) -> None: ...

class SnapshotSandboxRecordRequest(_message.Message):
    __slots__ = ("sandbox_id", "name", "filesystem_only")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    name: str
    filesystem_only: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., name: _Optional[str] = ..., filesystem_only: bool = ...) -> None: ...

class ForkSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "count", "timeout_s")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    count: int
    timeout_s: int
    def __init__(self, sandbox_id: _Optional[str] = ..., count: _Optional[int] = ..., timeout_s: _Optional[int] = ...) -> None: ...

class ForkResult(_message.Message):
    __slots__ = ("sandbox", "error_code", "error_message")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    error_code: str
    error_message: str
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class ForkSandboxResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ForkResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ForkResult, _Mapping]]] = ...) -> None: ...

class ConnectSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "timeout_s", "node_id", "reboot")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REBOOT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    timeout_s: int
    node_id: str
    reboot: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., timeout_s: _Optional[int] = ..., node_id: _Optional[str] = ..., reboot: bool = ...) -> None: ...

class ConnectSandboxResponse(_message.Message):
    __slots__ = ("sandbox", "resumed")
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    sandbox: Sandbox
    resumed: bool
    def __init__(self, sandbox: _Optional[_Union[Sandbox, _Mapping]] = ..., resumed: bool = ...) -> None: ...

class GetSandboxMetricsRequest(_message.Message):
    __slots__ = ("sandbox_id", "start", "end")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, sandbox_id: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Template(_message.Message):
    __slots__ = ("template_id", "aliases", "vcpus", "memory_mb", "disk_size_mb", "envd_version", "created_at", "updated_at", "source", "status", "spawn_count", "last_spawned_at", "snapshot_bytes", "no_memory_sharing", "expose_ports", "node_ids", "build_id", "team_id", "base_template_id", "source_sandbox_id", "fork_base", "home_node_id", "filesystem_only")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    ENVD_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SPAWN_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAST_SPAWNED_AT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    NO_MEMORY_SHARING_FIELD_NUMBER: _ClassVar[int]
    EXPOSE_PORTS_FIELD_NUMBER: _ClassVar[int]
    NODE_IDS_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    FORK_BASE_FIELD_NUMBER: _ClassVar[int]
    HOME_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    aliases: _containers.RepeatedScalarFieldContainer[str]
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    envd_version: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    source: str
    status: TemplateStatus
    spawn_count: int
    last_spawned_at: _timestamp_pb2.Timestamp
    snapshot_bytes: int
    no_memory_sharing: bool
    expose_ports: _containers.RepeatedScalarFieldContainer[int]
    node_ids: _containers.RepeatedScalarFieldContainer[str]
    build_id: str
    team_id: str
    base_template_id: str
    source_sandbox_id: str
    fork_base: bool
    home_node_id: str
    filesystem_only: bool
    def __init__(self, template_id: _Optional[str] = ..., aliases: _Optional[_Iterable[str]] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., disk_size_mb: _Optional[int] = ..., envd_version: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[str] = ..., status: _Optional[_Union[TemplateStatus, str]] = ..., spawn_count: _Optional[int] = ..., last_spawned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., snapshot_bytes: _Optional[int] = ..., no_memory_sharing: bool = ..., expose_ports: _Optional[_Iterable[int]] = ..., node_ids: _Optional[_Iterable[str]] = ..., build_id: _Optional[str] = ..., team_id: _Optional[str] = ..., base_template_id: _Optional[str] = ..., source_sandbox_id: _Optional[str] = ..., fork_base: bool = ..., home_node_id: _Optional[str] = ..., filesystem_only: bool = ...) -> None: ...

class TemplateAlias(_message.Message):
    __slots__ = ("alias", "template_id", "team_id")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    alias: str
    template_id: str
    team_id: str
    def __init__(self, alias: _Optional[str] = ..., template_id: _Optional[str] = ..., team_id: _Optional[str] = ...) -> None: ...

class ListTemplateRecordsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTemplateRecordsResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    def __init__(self, templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ...) -> None: ...

class GetTemplateRequest(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: str
    def __init__(self, template: _Optional[str] = ...) -> None: ...

class DeleteTemplateRecordRequest(_message.Message):
    __slots__ = ("template", "force")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    template: str
    force: bool
    def __init__(self, template: _Optional[str] = ..., force: bool = ...) -> None: ...

class DeleteTemplateRecordResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: bool = ...) -> None: ...

class PutTemplateRequest(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: Template
    def __init__(self, template: _Optional[_Union[Template, _Mapping]] = ...) -> None: ...

class ResolveTemplateAliasRequest(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    def __init__(self, alias: _Optional[str] = ...) -> None: ...

class TemplateTombstone(_message.Message):
    __slots__ = ("name", "template_id", "team_id", "deleted_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    template_id: str
    team_id: str
    deleted_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., template_id: _Optional[str] = ..., team_id: _Optional[str] = ..., deleted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TemplateTag(_message.Message):
    __slots__ = ("tag", "template_id", "build_id", "build_created_at", "assigned_at", "assignment_id", "current")
    TAG_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_AT_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    tag: str
    template_id: str
    build_id: str
    build_created_at: _timestamp_pb2.Timestamp
    assigned_at: _timestamp_pb2.Timestamp
    assignment_id: str
    current: bool
    def __init__(self, tag: _Optional[str] = ..., template_id: _Optional[str] = ..., build_id: _Optional[str] = ..., build_created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., assigned_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., assignment_id: _Optional[str] = ..., current: bool = ...) -> None: ...

class AssignTemplateTagsRequest(_message.Message):
    __slots__ = ("target", "tags")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    target: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class AssignTemplateTagsResponse(_message.Message):
    __slots__ = ("tags",)
    TAGS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[TemplateTag]
    def __init__(self, tags: _Optional[_Iterable[_Union[TemplateTag, _Mapping]]] = ...) -> None: ...

class RemoveTemplateTagsRequest(_message.Message):
    __slots__ = ("name", "tags")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveTemplateTagsResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...

class ListTemplateTagsRequest(_message.Message):
    __slots__ = ("template",)
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    template: str
    def __init__(self, template: _Optional[str] = ...) -> None: ...

class ListTemplateTagsResponse(_message.Message):
    __slots__ = ("template_id", "tags")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    tags: _containers.RepeatedCompositeFieldContainer[TemplateTag]
    def __init__(self, template_id: _Optional[str] = ..., tags: _Optional[_Iterable[_Union[TemplateTag, _Mapping]]] = ...) -> None: ...

class CreateTemplateBuildRequest(_message.Message):
    __slots__ = ("build", "aliases", "node_id", "deferred", "move_aliases", "tags")
    BUILD_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    MOVE_ALIASES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    build: _cubelet_pb2.BuildTemplateRequest
    aliases: _containers.RepeatedScalarFieldContainer[str]
    node_id: str
    deferred: bool
    move_aliases: bool
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, build: _Optional[_Union[_cubelet_pb2.BuildTemplateRequest, _Mapping]] = ..., aliases: _Optional[_Iterable[str]] = ..., node_id: _Optional[str] = ..., deferred: bool = ..., move_aliases: bool = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class StartTemplateBuildRequest(_message.Message):
    __slots__ = ("job_id", "build")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    build: _cubelet_pb2.BuildTemplateRequest
    def __init__(self, job_id: _Optional[str] = ..., build: _Optional[_Union[_cubelet_pb2.BuildTemplateRequest, _Mapping]] = ...) -> None: ...

class TemplateBuild(_message.Message):
    __slots__ = ("job_id", "template_id", "node_id", "phase", "message", "bytes_done", "bytes_total", "layers_done", "layers_total", "error", "failed_phase", "created_at", "updated_at", "finished_at", "heartbeat_at", "master_id", "spec", "aliases", "registry_auth", "events", "events_dropped", "template", "team_id", "deferred", "move_aliases", "failed_step", "tags")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_DONE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FAILED_PHASE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    MASTER_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_AUTH_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_DROPPED_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    MOVE_ALIASES_FIELD_NUMBER: _ClassVar[int]
    FAILED_STEP_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    template_id: str
    node_id: str
    phase: _cubelet_pb2.TemplateBuildPhase
    message: str
    bytes_done: int
    bytes_total: int
    layers_done: int
    layers_total: int
    error: str
    failed_phase: _cubelet_pb2.TemplateBuildPhase
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    heartbeat_at: _timestamp_pb2.Timestamp
    master_id: str
    spec: _cubelet_pb2.BuildTemplateRequest
    aliases: _containers.RepeatedScalarFieldContainer[str]
    registry_auth: bool
    events: _containers.RepeatedCompositeFieldContainer[_cubelet_pb2.TemplateBuildEvent]
    events_dropped: int
    template: _cubelet_pb2.TemplateInfo
    team_id: str
    deferred: bool
    move_aliases: bool
    failed_step: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., template_id: _Optional[str] = ..., node_id: _Optional[str] = ..., phase: _Optional[_Union[_cubelet_pb2.TemplateBuildPhase, str]] = ..., message: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., layers_done: _Optional[int] = ..., layers_total: _Optional[int] = ..., error: _Optional[str] = ..., failed_phase: _Optional[_Union[_cubelet_pb2.TemplateBuildPhase, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., master_id: _Optional[str] = ..., spec: _Optional[_Union[_cubelet_pb2.BuildTemplateRequest, _Mapping]] = ..., aliases: _Optional[_Iterable[str]] = ..., registry_auth: bool = ..., events: _Optional[_Iterable[_Union[_cubelet_pb2.TemplateBuildEvent, _Mapping]]] = ..., events_dropped: _Optional[int] = ..., template: _Optional[_Union[_cubelet_pb2.TemplateInfo, _Mapping]] = ..., team_id: _Optional[str] = ..., deferred: bool = ..., move_aliases: bool = ..., failed_step: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTemplateBuildRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListTemplateBuildsRequest(_message.Message):
    __slots__ = ("template_id",)
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    def __init__(self, template_id: _Optional[str] = ...) -> None: ...

class ListTemplateBuildsResponse(_message.Message):
    __slots__ = ("builds",)
    BUILDS_FIELD_NUMBER: _ClassVar[int]
    builds: _containers.RepeatedCompositeFieldContainer[TemplateBuild]
    def __init__(self, builds: _Optional[_Iterable[_Union[TemplateBuild, _Mapping]]] = ...) -> None: ...

class WatchTemplateBuildRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeAdmin(_message.Message):
    __slots__ = ("node_id", "draining", "reason", "updated_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    draining: bool
    reason: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, node_id: _Optional[str] = ..., draining: bool = ..., reason: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("status", "sandboxes_running", "sandboxes_paused", "state", "admin", "sandboxes_lost", "heartbeat_at")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_RUNNING_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_PAUSED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_LOST_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    status: _cubelet_pb2.NodeStatus
    sandboxes_running: int
    sandboxes_paused: int
    state: NodeState
    admin: NodeAdmin
    sandboxes_lost: int
    heartbeat_at: _timestamp_pb2.Timestamp
    def __init__(self, status: _Optional[_Union[_cubelet_pb2.NodeStatus, _Mapping]] = ..., sandboxes_running: _Optional[int] = ..., sandboxes_paused: _Optional[int] = ..., state: _Optional[_Union[NodeState, str]] = ..., admin: _Optional[_Union[NodeAdmin, _Mapping]] = ..., sandboxes_lost: _Optional[int] = ..., heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UndrainNodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node_id", "force")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    force: bool
    def __init__(self, node_id: _Optional[str] = ..., force: bool = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ("removed", "sandboxes_lost", "still_heartbeating")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_LOST_FIELD_NUMBER: _ClassVar[int]
    STILL_HEARTBEATING_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    sandboxes_lost: _containers.RepeatedScalarFieldContainer[str]
    still_heartbeating: bool
    def __init__(self, removed: bool = ..., sandboxes_lost: _Optional[_Iterable[str]] = ..., still_heartbeating: bool = ...) -> None: ...

class Team(_message.Message):
    __slots__ = ("team_id", "created_at", "quota", "usage")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    created_at: _timestamp_pb2.Timestamp
    quota: TeamQuota
    usage: TeamUsage
    def __init__(self, team_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quota: _Optional[_Union[TeamQuota, _Mapping]] = ..., usage: _Optional[_Union[TeamUsage, _Mapping]] = ...) -> None: ...

class TeamQuota(_message.Message):
    __slots__ = ("max_running", "max_vcpus", "max_memory_mb", "max_paused")
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    MAX_VCPUS_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MAX_PAUSED_FIELD_NUMBER: _ClassVar[int]
    max_running: int
    max_vcpus: int
    max_memory_mb: int
    max_paused: int
    def __init__(self, max_running: _Optional[int] = ..., max_vcpus: _Optional[int] = ..., max_memory_mb: _Optional[int] = ..., max_paused: _Optional[int] = ...) -> None: ...

class TeamUsage(_message.Message):
    __slots__ = ("running", "vcpus", "memory_mb", "paused")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    running: int
    vcpus: int
    memory_mb: int
    paused: int
    def __init__(self, running: _Optional[int] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., paused: _Optional[int] = ...) -> None: ...

class SetTeamQuotaRequest(_message.Message):
    __slots__ = ("team_id", "max_running", "max_vcpus", "max_memory_mb", "max_paused")
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    MAX_VCPUS_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    MAX_PAUSED_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    max_running: int
    max_vcpus: int
    max_memory_mb: int
    max_paused: int
    def __init__(self, team_id: _Optional[str] = ..., max_running: _Optional[int] = ..., max_vcpus: _Optional[int] = ..., max_memory_mb: _Optional[int] = ..., max_paused: _Optional[int] = ...) -> None: ...

class CreateTeamRequest(_message.Message):
    __slots__ = ("team_id",)
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    team_id: str
    def __init__(self, team_id: _Optional[str] = ...) -> None: ...

class ListTeamsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTeamsResponse(_message.Message):
    __slots__ = ("teams",)
    TEAMS_FIELD_NUMBER: _ClassVar[int]
    teams: _containers.RepeatedCompositeFieldContainer[Team]
    def __init__(self, teams: _Optional[_Iterable[_Union[Team, _Mapping]]] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("key_id", "name", "sha256", "mask", "created_at", "team_id", "role")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    name: str
    sha256: str
    mask: str
    created_at: _timestamp_pb2.Timestamp
    team_id: str
    role: ApiKeyRole
    def __init__(self, key_id: _Optional[str] = ..., name: _Optional[str] = ..., sha256: _Optional[str] = ..., mask: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., team_id: _Optional[str] = ..., role: _Optional[_Union[ApiKeyRole, str]] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("name", "team_id", "role")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    team_id: str
    role: ApiKeyRole
    def __init__(self, name: _Optional[str] = ..., team_id: _Optional[str] = ..., role: _Optional[_Union[ApiKeyRole, str]] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("api_key", "key")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    api_key: ApiKey
    key: str
    def __init__(self, api_key: _Optional[_Union[ApiKey, _Mapping]] = ..., key: _Optional[str] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("api_keys",)
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    def __init__(self, api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: bool
    def __init__(self, revoked: bool = ...) -> None: ...

class ValidateApiKeyRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetClusterStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MasterIdentity(_message.Message):
    __slots__ = ("master_id", "address", "since", "incarnation")
    MASTER_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    master_id: str
    address: str
    since: _timestamp_pb2.Timestamp
    incarnation: str
    def __init__(self, master_id: _Optional[str] = ..., address: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., incarnation: _Optional[str] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("leader", "self", "is_leader", "masters")
    LEADER_FIELD_NUMBER: _ClassVar[int]
    SELF_FIELD_NUMBER: _ClassVar[int]
    IS_LEADER_FIELD_NUMBER: _ClassVar[int]
    MASTERS_FIELD_NUMBER: _ClassVar[int]
    leader: MasterIdentity
    self: MasterIdentity
    is_leader: bool
    masters: _containers.RepeatedCompositeFieldContainer[MasterIdentity]
    def __init__(self_, leader: _Optional[_Union[MasterIdentity, _Mapping]] = ..., self: _Optional[_Union[MasterIdentity, _Mapping]] = ..., is_leader: bool = ..., masters: _Optional[_Iterable[_Union[MasterIdentity, _Mapping]]] = ...) -> None: ...

class Volume(_message.Message):
    __slots__ = ("volume_id", "name", "team_id", "node_id", "size_bytes", "token", "created_at", "mounted_by")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MOUNTED_BY_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    name: str
    team_id: str
    node_id: str
    size_bytes: int
    token: str
    created_at: _timestamp_pb2.Timestamp
    mounted_by: str
    def __init__(self, volume_id: _Optional[str] = ..., name: _Optional[str] = ..., team_id: _Optional[str] = ..., node_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., token: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mounted_by: _Optional[str] = ...) -> None: ...

class CreateVolumeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetVolumeRequest(_message.Message):
    __slots__ = ("volume_id",)
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    def __init__(self, volume_id: _Optional[str] = ...) -> None: ...

class ListVolumesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListVolumesResponse(_message.Message):
    __slots__ = ("volumes",)
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    volumes: _containers.RepeatedCompositeFieldContainer[Volume]
    def __init__(self, volumes: _Optional[_Iterable[_Union[Volume, _Mapping]]] = ...) -> None: ...

class DeleteVolumeRequest(_message.Message):
    __slots__ = ("volume_id",)
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    def __init__(self, volume_id: _Optional[str] = ...) -> None: ...
