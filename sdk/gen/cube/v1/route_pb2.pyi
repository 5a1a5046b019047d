from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_STATE_UNSPECIFIED: _ClassVar[RouteState]
    ROUTE_STATE_RUNNING: _ClassVar[RouteState]
    ROUTE_STATE_PAUSED: _ClassVar[RouteState]
ROUTE_STATE_UNSPECIFIED: RouteState
ROUTE_STATE_RUNNING: RouteState
ROUTE_STATE_PAUSED: RouteState

class SandboxRoute(_message.Message):
    __slots__ = ("sandbox_id", "node_id", "node_proxy_address", "host_address", "proxy_source_address", "state", "traffic_access_token", "auto_resume", "mask_request_host", "https_ports")
    SANDBOX_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_PROXY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PROXY_SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AUTO_RESUME_FIELD_NUMBER: _ClassVar[int]
    MASK_REQUEST_HOST_FIELD_NUMBER: _ClassVar[int]
    HTTPS_PORTS_FIELD_NUMBER: _ClassVar[int]
    sandbox_id: str
    node_id: str
    node_proxy_address: str
    host_address: str
    proxy_source_address: str
    state: RouteState
    traffic_access_token: str
    auto_resume: bool
    mask_request_host: str
    https_ports: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, sandbox_id: _Optional[str] = ..., node_id: _Optional[str] = ..., node_proxy_address: _Optional[str] = ..., host_address: _Optional[str] = ..., proxy_source_address: _Optional[str] = ..., state: _Optional[_Union[RouteState, str]] = ..., traffic_access_token: _Optional[str] = ..., auto_resume: bool = ..., mask_request_host: _Optional[str] = ..., https_ports: _Optional[_Iterable[int]] = ...) -> None: ...
