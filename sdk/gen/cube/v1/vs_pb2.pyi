from sdk.gen.cube.v1 import network_pb2 as _network_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SandboxNetwork(_message.Message):
    __slots__ = ("sandbox_id", "tap", "host_address", "proxy_address", "guest", "policy", "created_unix_ms")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    TAP_FIELD_NUMBER: _ClassVar[int]
    HOST_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROXY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    tap: str
    host_address: str
    proxy_address: str
    guest: _network_pb2.GuestNetwork
    policy: _network_pb2.NetworkPolicy
    created_unix_ms: int
    def __init__(self, sandbox_id: _Optional[str] = ..., tap: _Optional[str] = ..., host_address: _Optional[str] = ..., proxy_address: _Optional[str] = ..., guest: _Optional[_Union[_network_pb2.GuestNetwork, _Mapping]] = ..., policy: _Optional[_Union[_network_pb2.NetworkPolicy, _Mapping]] = ..., created_unix_ms: _Optional[int] = ...) -> None: ...

class AllocateRequest(_message.Message):
    __slots__ = ("sandbox_id", "policy", "guest")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    GUEST_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    policy: _network_pb2.NetworkPolicy
    guest: _network_pb2.GuestNetwork
    def __init__(self, sandbox_id: _Optional[str] = ..., policy: _Optional[_Union[_network_pb2.NetworkPolicy, _Mapping]] = ..., guest: _Optional[_Union[_network_pb2.GuestNetwork, _Mapping]] = ...) -> None: ...

class AllocateResponse(_message.Message):
    __slots__ = ("network", "warm")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    WARM_FIELD_NUMBER: _ClassVar[int]
    network: SandboxNetwork
    warm: bool
    def __init__(self, network: _Optional[_Union[SandboxNetwork, _Mapping]] = ..., warm: bool = ...) -> None: ...

class UpdatePolicyRequest(_message.Message):
    __slots__ = ("sandbox_id", "policy")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    policy: _network_pb2.NetworkPolicy
    def __init__(self, sandbox_id: _Optional[str] = ..., policy: _Optional[_Union[_network_pb2.NetworkPolicy, _Mapping]] = ...) -> None: ...

class UpdatePolicyResponse(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: SandboxNetwork
    def __init__(self, network: _Optional[_Union[SandboxNetwork, _Mapping]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("sandbox_id",)
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    def __init__(self, sandbox_id: _Optional[str] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: SandboxNetwork
    def __init__(self, network: _Optional[_Union[SandboxNetwork, _Mapping]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("networks",)
    NETWORKS_FIELD_NUMBER: _ClassVar[int]
    networks: _containers.RepeatedCompositeFieldContainer[SandboxNetwork]
    def __init__(self, networks: _Optional[_Iterable[_Union[SandboxNetwork, _Mapping]]] = ...) -> None: ...

class SandboxStats(_message.Message):
    __slots__ = ("sandbox_id", "egress_bytes", "egress_packets", "ingress_bytes", "ingress_packets", "drops")
    class DropsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BYTES_FIELD_NUMBER: _ClassVar[int]
    EGRESS_PACKETS_FIELD_NUMBER: _ClassVar[int]
    INGRESS_BYTES_FIELD_NUMBER: _ClassVar[int]
    INGRESS_PACKETS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    egress_bytes: int
    egress_packets: int
    ingress_bytes: int
    ingress_packets: int
    drops: _containers.ScalarMap[str, int]
    def __init__(self, sandbox_id: _Optional[str] = ..., egress_bytes: _Optional[int] = ..., egress_packets: _Optional[int] = ..., ingress_bytes: _Optional[int] = ..., ingress_packets: _Optional[int] = ..., drops: _Optional[_Mapping[str, int]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("sandbox_ids",)
    SANDBOX_IDS_FIELD_NUMBER: _ClassVar[int]
    sandbox_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, sandbox_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[SandboxStats]
    def __init__(self, stats: _Optional[_Iterable[_Union[SandboxStats, _Mapping]]] = ...) -> None: ...

class ReconcileRequest(_message.Message):
    __slots__ = ("live_sandbox_ids", "cleanup_only")
    LIVE_SANDBOX_IDS_FIELD_NUMBER: _ClassVar[int]
    CLEANUP_ONLY_FIELD_NUMBER: _ClassVar[int]
    live_sandbox_ids: _containers.RepeatedScalarFieldContainer[str]
    cleanup_only: bool
    def __init__(self, live_sandbox_ids: _Optional[_Iterable[str]] = ..., cleanup_only: bool = ...) -> None: ...

class ReconcileResponse(_message.Message):
    __slots__ = ("released", "missing", "removed_taps", "removed_entries")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    REMOVED_TAPS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    released: _containers.RepeatedScalarFieldContainer[str]
    missing: _containers.RepeatedScalarFieldContainer[str]
    removed_taps: _containers.RepeatedScalarFieldContainer[str]
    removed_entries: int
    def __init__(self, released: _Optional[_Iterable[str]] = ..., missing: _Optional[_Iterable[str]] = ..., removed_taps: _Optional[_Iterable[str]] = ..., removed_entries: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("sandboxes", "max_sandboxes", "warm_taps", "pool_size", "pool_cidr", "proxy_address", "uplinks", "nat_flows", "mss_clamp")
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    MAX_SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    WARM_TAPS_FIELD_NUMBER: _ClassVar[int]
    POOL_SIZE_FIELD_NUMBER: _ClassVar[int]
    POOL_CIDR_FIELD_NUMBER: _ClassVar[int]
    PROXY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UPLINKS_FIELD_NUMBER: _ClassVar[int]
    NAT_FLOWS_FIELD_NUMBER: _ClassVar[int]
    MSS_CLAMP_FIELD_NUMBER: _ClassVar[int]
    sandboxes: int
    max_sandboxes: int
    warm_taps: int
    pool_size: int
    pool_cidr: str
    proxy_address: str
    uplinks: _containers.RepeatedScalarFieldContainer[str]
    nat_flows: int
    mss_clamp: int
    def __init__(self, sandboxes: _Optional[int] = ..., max_sandboxes: _Optional[int] = ..., warm_taps: _Optional[int] = ..., pool_size: _Optional[int] = ..., pool_cidr: _Optional[str] = ..., proxy_address: _Optional[str] = ..., uplinks: _Optional[_Iterable[str]] = ..., nat_flows: _Optional[int] = ..., mss_clamp: _Optional[int] = ...) -> None: ...
