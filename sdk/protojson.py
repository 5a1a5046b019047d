"""Canonical proto3 JSON for the typed (betterproto) messages of ``sdk.typed``.

betterproto's own ``to_dict()`` is close to proto3 JSON but not it: the generator strips each
enum's type prefix from the member names (``SANDBOX_PHASE_RUNNING`` becomes
``SandboxPhase.RUNNING``), and ``to_dict()`` prints the stripped names, which no protobuf JSON parser
accepts. ``cubemastercli --json`` promises proto3 JSON to the scripts that read it, so here the
JSON is printed by protobuf itself from the message's wire bytes, with the descriptors that
``make protos`` generates from the same ``.proto`` files into ``sdk.gen``.

Invariant: ``to_dict(m)`` equals ``json_format.MessageToDict`` of the protobuf message parsed from
``bytes(m)``: camelCase names, defaults omitted, 64-bit integers as strings, enum names as in the
``.proto``, timestamps in RFC 3339. Timestamps have microseconds at most: betterproto holds them
as ``datetime``, which drops the nanoseconds a protobuf Timestamp can carry.
"""

from __future__ import annotations

from typing import Any

import betterproto
from google.protobuf import descriptor_pool, json_format, message_factory

# Importing the generated modules registers their descriptors in the default pool.
from sdk.gen.cube.v1 import cubelet_pb2, master_pb2, network_pb2, route_pb2, vs_pb2  # noqa: F401

_TYPED_ROOT = "sdk.typed."


def to_dict(msg: betterproto.Message) -> dict[str, Any]:
    """``msg`` as proto3 JSON (a dict ready for ``json.dumps``)."""
    # betterproto names a top-level message class as the .proto does, in a module named for its
    # package: sdk.typed.cube.v1.Sandbox is cube.v1.Sandbox.
    package = type(msg).__module__.removeprefix(_TYPED_ROOT)
    descriptor = descriptor_pool.Default().FindMessageTypeByName(f"{package}.{type(msg).__name__}")
    proto = message_factory.GetMessageClass(descriptor).FromString(bytes(msg))
    return json_format.MessageToDict(proto)
