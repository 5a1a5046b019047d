import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from sdk.gen.cube.v1 import network_pb2 as _network_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SANDBOX_STATE_UNSPECIFIED: _ClassVar[SandboxState]
    SANDBOX_STATE_RUNNING: _ClassVar[SandboxState]
    SANDBOX_STATE_PAUSED: _ClassVar[SandboxState]

class TemplateBuildPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEMPLATE_BUILD_PHASE_UNSPECIFIED: _ClassVar[TemplateBuildPhase]
    PULLING: _ClassVar[TemplateBuildPhase]
    UNPACKING: _ClassVar[TemplateBuildPhase]
    BUILDING_IMAGE: _ClassVar[TemplateBuildPhase]
    BOOTING: _ClassVar[TemplateBuildPhase]
    PROBING: _ClassVar[TemplateBuildPhase]
    SNAPSHOTTING: _ClassVar[TemplateBuildPhase]
    READY: _ClassVar[TemplateBuildPhase]
    FAILED: _ClassVar[TemplateBuildPhase]
    RUNNING_STEPS: _ClassVar[TemplateBuildPhase]

class VolumeOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOLUME_OP_UNSPECIFIED: _ClassVar[VolumeOp]
    VOLUME_OP_STAT: _ClassVar[VolumeOp]
    VOLUME_OP_LIST: _ClassVar[VolumeOp]
    VOLUME_OP_MAKE_DIR: _ClassVar[VolumeOp]
    VOLUME_OP_UPDATE_METADATA: _ClassVar[VolumeOp]
    VOLUME_OP_REMOVE: _ClassVar[VolumeOp]
    VOLUME_OP_READ_FILE: _ClassVar[VolumeOp]
    VOLUME_OP_WRITE_FILE: _ClassVar[VolumeOp]

class VolumeEntryType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VOLUME_ENTRY_TYPE_UNSPECIFIED: _ClassVar[VolumeEntryType]
    VOLUME_ENTRY_TYPE_FILE: _ClassVar[VolumeEntryType]
    VOLUME_ENTRY_TYPE_DIRECTORY: _ClassVar[VolumeEntryType]
    VOLUME_ENTRY_TYPE_SYMLINK: _ClassVar[VolumeEntryType]
SANDBOX_STATE_UNSPECIFIED: SandboxState
SANDBOX_STATE_RUNNING: SandboxState
SANDBOX_STATE_PAUSED: SandboxState
TEMPLATE_BUILD_PHASE_UNSPECIFIED: TemplateBuildPhase
PULLING: TemplateBuildPhase
UNPACKING: TemplateBuildPhase
BUILDING_IMAGE: TemplateBuildPhase
BOOTING: TemplateBuildPhase
PROBING: TemplateBuildPhase
SNAPSHOTTING: TemplateBuildPhase
READY: TemplateBuildPhase
FAILED: TemplateBuildPhase
RUNNING_STEPS: TemplateBuildPhase
VOLUME_OP_UNSPECIFIED: VolumeOp
VOLUME_OP_STAT: VolumeOp
VOLUME_OP_LIST: VolumeOp
VOLUME_OP_MAKE_DIR: VolumeOp
VOLUME_OP_UPDATE_METADATA: VolumeOp
VOLUME_OP_REMOVE: VolumeOp
VOLUME_OP_READ_FILE: VolumeOp
VOLUME_OP_WRITE_FILE: VolumeOp
VOLUME_ENTRY_TYPE_UNSPECIFIED: VolumeEntryType
VOLUME_ENTRY_TYPE_FILE: VolumeEntryType
VOLUME_ENTRY_TYPE_DIRECTORY: VolumeEntryType
VOLUME_ENTRY_TYPE_SYMLINK: VolumeEntryType

class SandboxRef(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class PauseSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "filesystem_only", "require_healthy_guest")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_HEALTHY_GUEST_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    filesystem_only: bool
    require_healthy_guest: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., filesystem_only: bool = ..., require_healthy_guest: bool = ...) -> None: ...

class RunSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "template_id", "env_vars", "envd_access_token", "network", "metadata", "volumes")
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    ENVD_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template_id: str
    env_vars: _containers.ScalarMap[str, str]
    envd_access_token: str
    network: _network_pb2.NetworkPolicy
    metadata: _containers.ScalarMap[str, str]
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeMount]
    def __init__(self, sandbox_id: _Optional[str] = ..., template_id: _Optional[str] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., envd_access_token: _Optional[str] = ..., network: _Optional[_Union[_network_pb2.NetworkPolicy, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., volumes: _Optional[_Iterable[_Union[VolumeMount, _Mapping]]] = ...) -> None: ...

class VolumeMount(_message.Message):
    __slots__ = ("volume_id", "team_id", "path", "name")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    team_id: str
    path: str
    name: str
    def __init__(self, volume_id: _Optional[str] = ..., team_id: _Optional[str] = ..., path: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ResumeSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "env_vars", "envd_access_token", "network", "source", "reboot")
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    ENVD_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REBOOT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    env_vars: _containers.ScalarMap[str, str]
    envd_access_token: str
    network: _network_pb2.NetworkPolicy
    source: PausedSource
    reboot: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., envd_access_token: _Optional[str] = ..., network: _Optional[_Union[_network_pb2.NetworkPolicy, _Mapping]] = ..., source: _Optional[_Union[PausedSource, _Mapping]] = ..., reboot: bool = ...) -> None: ...

class PausedSource(_message.Message):
    __slots__ = ("node_id", "address")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class SandboxStatus(_message.Message):
    __slots__ = ("sandbox_id", "template_id", "node_id", "state", "host_address", "proxy_source_address", "started_at", "vcpus", "memory_mb", "disk_size_mb", "envd_version", "network", "metadata", "from_warm_pool", "filesystem_only", "volumes")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HOST_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROXY_SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    DISK_SIZE_MB_FIELD_NUMBER: _ClassVar[int]
    ENVD_VERSION_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FROM_WARM_POOL_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    VOLUMES_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template_id: str
    node_id: str
    state: SandboxState
    host_address: str
    proxy_source_address: str
    started_at: _timestamp_pb2.Timestamp
    vcpus: int
    memory_mb: int
    disk_size_mb: int
    envd_version: str
    network: _network_pb2.NetworkPolicy
    metadata: _containers.ScalarMap[str, str]
    from_warm_pool: bool
    filesystem_only: bool
    volumes: _containers.RepeatedCompositeFieldContainer[VolumeMount]
    def __init__(self, sandbox_id: _Optional[str] = ..., template_id: _Optional[str] = ..., node_id: _Optional[str] = ..., state: _Optional[_Union[SandboxState, str]] = ..., host_address: _Optional[str] = ..., proxy_source_address: _Optional[str] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., disk_size_mb: _Optional[int] = ..., envd_version: _Optional[str] = ..., network: _Optional[_Union[_network_pb2.NetworkPolicy, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., from_warm_pool: bool = ..., filesystem_only: bool = ..., volumes: _Optional[_Iterable[_Union[VolumeMount, _Mapping]]] = ...) -> None: ...

class KillSandboxResponse(_message.Message):
    __slots__ = ("killed",)
    KILLED_FIELD_NUMBER: _ClassVar[int]
    killed: bool
    def __init__(self, killed: bool = ...) -> None: ...

class ListSandboxesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSandboxesResponse(_message.Message):
    __slots__ = ("sandboxes",)
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[SandboxStatus]
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[SandboxStatus, _Mapping]]] = ...) -> None: ...

class UpdateNetworkRequest(_message.Message):
    __slots__ = ("sandbox_id", "network")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    network: _network_pb2.NetworkPolicy
    def __init__(self, sandbox_id: _Optional[str] = ..., network: _Optional[_Union[_network_pb2.NetworkPolicy, _Mapping]] = ...) -> None: ...

class SandboxMetric(_message.Message):
    __slots__ = ("timestamp", "cpu_count", "cpu_used_pct", "mem_used_bytes", "mem_total_bytes", "mem_cache_bytes", "disk_used_bytes", "disk_total_bytes")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    CPU_USED_PCT_FIELD_NUMBER: _ClassVar[int]
    MEM_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEM_CACHE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    cpu_count: int
    cpu_used_pct: float
    mem_used_bytes: int
    mem_total_bytes: int
    mem_cache_bytes: int
    disk_used_bytes: int
    disk_total_bytes: int
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cpu_count: _Optional[int] = ..., cpu_used_pct: _Optional[float] = ..., mem_used_bytes: _Optional[int] = ..., mem_total_bytes: _Optional[int] = ..., mem_cache_bytes: _Optional[int] = ..., disk_used_bytes: _Optional[int] = ..., disk_total_bytes: _Optional[int] = ...) -> None: ...

class SandboxMetricsResponse(_message.Message):
    __slots__ = ("metrics",)
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedCompositeFieldContainer[SandboxMetric]
    def __init__(self, metrics: _Optional[_Iterable[_Union[SandboxMetric, _Mapping]]] = ...) -> None: ...

class SandboxLogsRequest(_message.Message):
    __slots__ = ("sandbox_id", "since", "limit")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    since: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, sandbox_id: _Optional[str] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("timestamp", "line")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    line: str
    def __init__(self, timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., line: _Optional[str] = ...) -> None: ...

class SandboxLogsResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class OciImageSource(_message.Message):
    __slots__ = ("reference", "username", "password", "insecure_registry")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    INSECURE_REGISTRY_FIELD_NUMBER: _ClassVar[int]
    reference: str
    username: str
    password: str
    insecure_registry: bool
    def __init__(self, reference: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ..., insecure_registry: bool = ...) -> None: ...

class DefaultImageSource(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TemplateSource(_message.Message):
    __slots__ = ("template_id",)
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    def __init__(self, template_id: _Optional[str] = ...) -> None: ...

class BuildStep(_message.Message):
    __slots__ = ("type", "args", "files_hash", "force", "files_url")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    FILES_HASH_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    FILES_URL_FIELD_NUMBER: _ClassVar[int]
    type: str
    args: _containers.RepeatedScalarFieldContainer[str]
    files_hash: str
    force: bool
    files_url: str
    def __init__(self, type: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., files_hash: _Optional[str] = ..., force: bool = ..., files_url: _Optional[str] = ...) -> None: ...

class BuildTemplateRequest(_message.Message):
    __slots__ = ("template_id", "default_image", "oci_image", "from_template", "vcpus", "memory_mb", "writable_layer_mb", "expose_ports", "probe_port", "probe_path", "env", "cmd", "args", "no_memory_sharing", "steps", "start_cmd", "ready_cmd", "files_team", "steps_internet")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    OCI_IMAGE_FIELD_NUMBER: _ClassVar[int]
    FROM_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_LAYER_MB_FIELD_NUMBER: _ClassVar[int]
    EXPOSE_PORTS_FIELD_NUMBER: _ClassVar[int]
    PROBE_PORT_FIELD_NUMBER: _ClassVar[int]
    PROBE_PATH_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CMD_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    NO_MEMORY_SHARING_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    START_CMD_FIELD_NUMBER: _ClassVar[int]
    READY_CMD_FIELD_NUMBER: _ClassVar[int]
    FILES_TEAM_FIELD_NUMBER: _ClassVar[int]
    STEPS_INTERNET_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    default_image: DefaultImageSource
    oci_image: OciImageSource
    from_template: TemplateSource
    vcpus: int
    memory_mb: int
    writable_layer_mb: int
    expose_ports: _containers.RepeatedScalarFieldContainer[int]
    probe_port: int
    probe_path: str
    env: _containers.ScalarMap[str, str]
    cmd: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    no_memory_sharing: bool
    steps: _containers.RepeatedCompositeFieldContainer[BuildStep]
    start_cmd: str
    ready_cmd: str
    files_team: str
    steps_internet: bool
    def __init__(self, template_id: _Optional[str] = ..., default_image: _Optional[_Union[DefaultImageSource, _Mapping]] = ..., oci_image: _Optional[_Union[OciImageSource, _Mapping]] = ..., from_template: _Optional[_Union[TemplateSource, _Mapping]] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., writable_layer_mb: _Optional[int] = ..., expose_ports: _Optional[_Iterable[int]] = ..., probe_port: _Optional[int] = ..., probe_path: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., cmd: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., no_memory_sharing: bool = ..., steps: _Optional[_Iterable[_Union[BuildStep, _Mapping]]] = ..., start_cmd: _Optional[str] = ..., ready_cmd: _Optional[str] = ..., files_team: _Optional[str] = ..., steps_internet: bool = ...) -> None: ...

class TemplateBuildEvent(_message.Message):
    __slots__ = ("phase", "message", "bytes_done", "bytes_total", "layers_done", "layers_total", "timestamp", "template", "error", "step", "stderr")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_DONE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    phase: TemplateBuildPhase
    message: str
    bytes_done: int
    bytes_total: int
    layers_done: int
    layers_total: int
    timestamp: _timestamp_pb2.Timestamp
    template: TemplateInfo
    error: str
    step: str
    stderr: bool
    def __init__(self, phase: _Optional[_Union[TemplateBuildPhase, str]] = ..., message: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., layers_done: _Optional[int] = ..., layers_total: _Optional[int] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., template: _Optional[_Union[TemplateInfo, _Mapping]] = ..., error: _Optional[str] = ..., step: _Optional[str] = ..., stderr: bool = ...) -> None: ...

class TemplateInfo(_message.Message):
    __slots__ = ("template_id", "vcpus", "memory_mb", "writable_layer_mb", "envd_version", "created_at", "snapshot_bytes", "expose_ports", "source", "node_id", "phase_ms", "no_memory_sharing", "base_template_id", "source_sandbox_id", "filesystem_only", "default_user", "default_workdir")
    class PhaseMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    VCPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_LAYER_MB_FIELD_NUMBER: _ClassVar[int]
    ENVD_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPOSE_PORTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_MS_FIELD_NUMBER: _ClassVar[int]
    NO_MEMORY_SHARING_FIELD_NUMBER: _ClassVar[int]
    BASE_TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_USER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WORKDIR_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    vcpus: int
    memory_mb: int
    writable_layer_mb: int
    envd_version: str
    created_at: _timestamp_pb2.Timestamp
    snapshot_bytes: int
    expose_ports: _containers.RepeatedScalarFieldContainer[int]
    source: str
    node_id: str
    phase_ms: _containers.ScalarMap[str, int]
    no_memory_sharing: bool
    base_template_id: str
    source_sandbox_id: str
    filesystem_only: bool
    default_user: str
    default_workdir: str
    def __init__(self, template_id: _Optional[str] = ..., vcpus: _Optional[int] = ..., memory_mb: _Optional[int] = ..., writable_layer_mb: _Optional[int] = ..., envd_version: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., snapshot_bytes: _Optional[int] = ..., expose_ports: _Optional[_Iterable[int]] = ..., source: _Optional[str] = ..., node_id: _Optional[str] = ..., phase_ms: _Optional[_Mapping[str, int]] = ..., no_memory_sharing: bool = ..., base_template_id: _Optional[str] = ..., source_sandbox_id: _Optional[str] = ..., filesystem_only: bool = ..., default_user: _Optional[str] = ..., default_workdir: _Optional[str] = ...) -> None: ...

class SnapshotSandboxRequest(_message.Message):
    __slots__ = ("sandbox_id", "template_id", "filesystem_only")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEM_ONLY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template_id: str
    filesystem_only: bool
    def __init__(self, sandbox_id: _Optional[str] = ..., template_id: _Optional[str] = ..., filesystem_only: bool = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[TemplateInfo]
    def __init__(self, templates: _Optional[_Iterable[_Union[TemplateInfo, _Mapping]]] = ...) -> None: ...

class DeleteTemplateRequest(_message.Message):
    __slots__ = ("template_id", "force")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    force: bool
    def __init__(self, template_id: _Optional[str] = ..., force: bool = ...) -> None: ...

class DeleteTemplateResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: bool = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node_id", "address", "proxy_address", "vcpus_total", "memory_total_bytes", "memory_available_bytes", "sandboxes_running", "sandboxes_paused", "templates", "accel", "max_sandboxes", "disk_free_bytes", "disk_watermark_bytes", "sandboxes_can_take", "sandbox_memory_estimate_bytes")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROXY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VCPUS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_RUNNING_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_PAUSED_FIELD_NUMBER: _ClassVar[int]
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    ACCEL_FIELD_NUMBER: _ClassVar[int]
    MAX_SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    DISK_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISK_WATERMARK_BYTES_FIELD_NUMBER: _ClassVar[int]
    SANDBOXES_CAN_TAKE_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_MEMORY_ESTIMATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    proxy_address: str
    vcpus_total: int
    memory_total_bytes: int
    memory_available_bytes: int
    sandboxes_running: int
    sandboxes_paused: int
    templates: _containers.RepeatedScalarFieldContainer[str]
    accel: str
    max_sandboxes: int
    disk_free_bytes: int
    disk_watermark_bytes: int
    sandboxes_can_take: int
    sandbox_memory_estimate_bytes: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., proxy_address: _Optional[str] = ..., vcpus_total: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., memory_available_bytes: _Optional[int] = ..., sandboxes_running: _Optional[int] = ..., sandboxes_paused: _Optional[int] = ..., templates: _Optional[_Iterable[str]] = ..., accel: _Optional[str] = ..., max_sandboxes: _Optional[int] = ..., disk_free_bytes: _Optional[int] = ..., disk_watermark_bytes: _Optional[int] = ..., sandboxes_can_take: _Optional[int] = ..., sandbox_memory_estimate_bytes: _Optional[int] = ...) -> None: ...

class GetTemplateManifestRequest(_message.Message):
    __slots__ = ("template_id",)
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    def __init__(self, template_id: _Optional[str] = ...) -> None: ...

class TemplateArtifact(_message.Message):
    __slots__ = ("name", "size", "sha256", "mode")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    mode: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., mode: _Optional[int] = ...) -> None: ...

class TemplateManifest(_message.Message):
    __slots__ = ("template_id", "build_key", "info", "env", "artifacts")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_KEY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    build_key: str
    info: TemplateInfo
    env: _containers.ScalarMap[str, str]
    artifacts: _containers.RepeatedCompositeFieldContainer[TemplateArtifact]
    def __init__(self, template_id: _Optional[str] = ..., build_key: _Optional[str] = ..., info: _Optional[_Union[TemplateInfo, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ..., artifacts: _Optional[_Iterable[_Union[TemplateArtifact, _Mapping]]] = ...) -> None: ...

class FetchArtifactRequest(_message.Message):
    __slots__ = ("template_id", "build_key", "name")
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_KEY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    template_id: str
    build_key: str
    name: str
    def __init__(self, template_id: _Optional[str] = ..., build_key: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class PausedManifest(_message.Message):
    __slots__ = ("sandbox_id", "template_id", "build_key", "save_id", "sandbox", "envd_access_token", "env_vars", "artifacts")
    class EnvVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_KEY_FIELD_NUMBER: _ClassVar[int]
    SAVE_ID_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    ENVD_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENV_VARS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    template_id: str
    build_key: str
    save_id: str
    sandbox: SandboxStatus
    envd_access_token: str
    env_vars: _containers.ScalarMap[str, str]
    artifacts: _containers.RepeatedCompositeFieldContainer[TemplateArtifact]
    def __init__(self, sandbox_id: _Optional[str] = ..., template_id: _Optional[str] = ..., build_key: _Optional[str] = ..., save_id: _Optional[str] = ..., sandbox: _Optional[_Union[SandboxStatus, _Mapping]] = ..., envd_access_token: _Optional[str] = ..., env_vars: _Optional[_Mapping[str, str]] = ..., artifacts: _Optional[_Iterable[_Union[TemplateArtifact, _Mapping]]] = ...) -> None: ...

class FetchPausedArtifactRequest(_message.Message):
    __slots__ = ("sandbox_id", "save_id", "name")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    SAVE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    save_id: str
    name: str
    def __init__(self, sandbox_id: _Optional[str] = ..., save_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class NodeVolumeRequest(_message.Message):
    __slots__ = ("volume_id", "team_id", "size_bytes")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    team_id: str
    size_bytes: int
    def __init__(self, volume_id: _Optional[str] = ..., team_id: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class NodeVolume(_message.Message):
    __slots__ = ("volume_id", "size_bytes", "used_bytes")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    size_bytes: int
    used_bytes: int
    def __init__(self, volume_id: _Optional[str] = ..., size_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ...) -> None: ...

class DeleteVolumeResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: bool = ...) -> None: ...

class VolumeContentRequest(_message.Message):
    __slots__ = ("volume_id", "token", "op", "path", "depth", "uid", "gid", "mode", "force", "team_id")
    VOLUME_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    volume_id: str
    token: str
    op: VolumeOp
    path: str
    depth: int
    uid: int
    gid: int
    mode: int
    force: bool
    team_id: str
    def __init__(self, volume_id: _Optional[str] = ..., token: _Optional[str] = ..., op: _Optional[_Union[VolumeOp, str]] = ..., path: _Optional[str] = ..., depth: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., mode: _Optional[int] = ..., force: bool = ..., team_id: _Optional[str] = ...) -> None: ...

class VolumeEntry(_message.Message):
    __slots__ = ("name", "type", "path", "size", "mode", "uid", "gid", "atime", "mtime", "ctime", "target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    ATIME_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    CTIME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: VolumeEntryType
    path: str
    size: int
    mode: int
    uid: int
    gid: int
    atime: _timestamp_pb2.Timestamp
    mtime: _timestamp_pb2.Timestamp
    ctime: _timestamp_pb2.Timestamp
    target: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[VolumeEntryType, str]] = ..., path: _Optional[str] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., atime: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mtime: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ctime: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., target: _Optional[str] = ...) -> None: ...

class VolumeContentResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[VolumeEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[VolumeEntry, _Mapping]]] = ...) -> None: ...

class VolumeFileChunk(_message.Message):
    __slots__ = ("request", "entry", "data", "eof")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    request: VolumeContentRequest
    entry: VolumeEntry
    data: bytes
    eof: bool
    def __init__(self, request: _Optional[_Union[VolumeContentRequest, _Mapping]] = ..., entry: _Optional[_Union[VolumeEntry, _Mapping]] = ..., data: _Optional[bytes] = ..., eof: bool = ...) -> None: ...
