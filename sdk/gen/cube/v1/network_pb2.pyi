from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class NetworkPolicy(_message.Message):
    __slots__ = ("allow_internet_access", "allow_out", "deny_out", "exposed_ports", "expose_all_ports", "require_traffic_token", "mask_request_host", "https_ports")
    ALLOW_INTERNET_ACCESS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_OUT_FIELD_NUMBER: _ClassVar[int]
    DENY_OUT_FIELD_NUMBER: _ClassVar[int]
    EXPOSED_PORTS_FIELD_NUMBER: _ClassVar[int]
    EXPOSE_ALL_PORTS_FIELD_NUMBER: _ClassVar[int]
    REQUIRE_TRAFFIC_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MASK_REQUEST_HOST_FIELD_NUMBER: _ClassVar[int]
    HTTPS_PORTS_FIELD_NUMBER: _ClassVar[int]
    allow_internet_access: bool
    allow_out: _containers.RepeatedScalarFieldContainer[str]
    deny_out: _containers.RepeatedScalarFieldContainer[str]
    exposed_ports: _containers.RepeatedScalarFieldContainer[int]
    expose_all_ports: bool
    require_traffic_token: bool
    mask_request_host: str
    https_ports: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, allow_internet_access: bool = ..., allow_out: _Optional[_Iterable[str]] = ..., deny_out: _Optional[_Iterable[str]] = ..., exposed_ports: _Optional[_Iterable[int]] = ..., expose_all_ports: bool = ..., require_traffic_token: bool = ..., mask_request_host: _Optional[str] = ..., https_ports: _Optional[_Iterable[int]] = ...) -> None: ...

class GuestNetwork(_message.Message):
    __slots__ = ("ip", "prefix_len", "gateway_ip", "mac", "gateway_mac")
    IP_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LEN_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_IP_FIELD_NUMBER: _ClassVar[int]
    MAC_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_MAC_FIELD_NUMBER: _ClassVar[int]
    ip: str
    prefix_len: int
    gateway_ip: str
    mac: str
    gateway_mac: str
    def __init__(self, ip: _Optional[str] = ..., prefix_len: _Optional[int] = ..., gateway_ip: _Optional[str] = ..., mac: _Optional[str] = ..., gateway_mac: _Optional[str] = ...) -> None: ...
