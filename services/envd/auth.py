"""Who is calling: the access token check and the user a request acts as."""

from __future__ import annotations

import base64
import binascii

from . import users
from .connect import Code, ConnectError
from .identity import Identity
from .users import User


def username_from_basic(header: str | None) -> str | None:
    """`Authorization: Basic base64("<user>:")` as the SDK sends it; None when absent."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise ConnectError(Code.UNAUTHENTICATED, "unsupported Authorization scheme; use Basic")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ConnectError(Code.UNAUTHENTICATED, "malformed Basic credentials") from e
    name, _, _password = decoded.partition(":")
    return name or None


def resolve_user(identity: Identity, name: str | None) -> User:
    """The named user of the template root, or the sandbox default; raises UnknownUser."""
    return users.lookup(name or identity.default_user)


def rpc_user(identity: Identity, authorization: str | None) -> User:
    name = username_from_basic(authorization)
    try:
        return resolve_user(identity, name)
    except users.UnknownUser as e:
        raise ConnectError(Code.UNAUTHENTICATED, f"invalid username: '{name or identity.default_user}'") from e
