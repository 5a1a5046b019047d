"""The sandbox identity the host hands over with POST /init, and the one place that owns it.

After a snapshot restore every clone shares the template's memory, so the host tells each clone
who it is: its access token, env vars, clock and fresh entropy. Everything that depends on that
(auth checks, process and kernel environments, log lines) reads it from one `Identity`.
"""

from __future__ import annotations

import base64
import ctypes
import fcntl
import hashlib
import hmac
import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from cube_common import jsonlog

from .users import User

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log = logging.getLogger("envd.identity")

# Below this drift the guest clock is left alone: stepping it costs more than it fixes, and on a
# developer host (tests) the agent must never move the host's clock.
CLOCK_STEP_THRESHOLD_S = 1.0
RNDADDENTROPY = 0x40085203
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07): reseed the crng now instead of at its next interval


class InitError(ValueError):
    pass


class SignatureRejected(Exception):
    """Why a signed `/files` URL is refused, with upstream envd's status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InitRequest:
    access_token: str | None = None
    env_vars: dict[str, str] | None = None
    timestamp: float | None = None  # unix seconds
    default_user: str | None = None
    default_workdir: str | None = None
    entropy: bytes | None = None
    sandbox_id: str | None = None

    @classmethod
    def from_json(cls, body: object) -> InitRequest:
        if not isinstance(body, dict):
            raise InitError("body must be a JSON object")
        env = body.get("envVars")
        if env is not None and (
            not isinstance(env, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise InitError("envVars must map strings to strings")
        token = body.get("accessToken")
        if token is not None and not isinstance(token, str):
            raise InitError("accessToken must be a string")
        entropy = body.get("entropy")
        if entropy is not None:
            try:
                entropy = base64.b64decode(entropy, validate=True)
            except (ValueError, TypeError) as e:
                raise InitError("entropy must be base64") from e
        for key in ("defaultUser", "defaultWorkdir", "sandboxID"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise InitError(f"{key} must be a string")
        return cls(
            access_token=token,
            env_vars=env,
            timestamp=_parse_timestamp(body.get("timestamp")),
            default_user=body.get("defaultUser") or None,
            default_workdir=body.get("defaultWorkdir") or None,
            entropy=entropy,
            sandbox_id=body.get("sandboxID") or body.get("sandboxId") or None,
        )


def _parse_timestamp(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InitError("timestamp must be RFC 3339 or unix seconds")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        # Python 3.11 takes at most 6 fractional digits; Go sends 9.
        if "." in text:
            head, rest = text.split(".", 1)
            n = 0
            while n < len(rest) and rest[n].isdigit():
                n += 1
            digits, tz = rest[:n], rest[n:]
            text = f"{head}.{digits[:6]}{tz}"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError as e:
            raise InitError(f"timestamp {value!r} is neither RFC 3339 nor unix seconds") from e
        if dt.tzinfo is None:
            raise InitError("timestamp needs a UTC offset")
        return dt.timestamp()
    raise InitError("timestamp must be RFC 3339 or unix seconds")


@dataclass
class Identity:
    default_user: str = "user"
    access_token: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    default_workdir: str | None = None
    sandbox_id: str | None = None
    # Bumped on every /init so long-lived kernels can pick up new env vars lazily.
    generation: int = 0
    # Bumped on every /init that makes this a new clone: one carrying `entropy` (the host sends it
    # after every restore) or changing the access token. Running kernels reseed the RNGs user code
    # sees (random, numpy.random, bash $RANDOM) before their next cell; see interpreter/execute.py.
    # An /init that only updates env vars or the clock leaves a user's `random.seed(42)` alone.
    reseed_generation: int = 0
    # Called after every /init, e.g. so the interpreter catches its kernels up at once rather than
    # at their next cell. Callbacks must not block (they schedule their work).
    listeners: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def process_env(self, user: User) -> dict[str, str]:
        """The environment every process and kernel starts from: a login-like base for the
        user, then the sandbox env vars from /init. Per-call env vars go on top of this."""
        env = {
            "PATH": DEFAULT_PATH,
            "HOME": user.home,
            "USER": user.name,
            "LOGNAME": user.name,
            "SHELL": user.shell,
            "LANG": "C.UTF-8",
        }
        env.update(self.env_vars)
        return env

    # -- auth ---------------------------------------------------------------------------------

    def token_required(self) -> bool:
        return bool(self.access_token)

    def token_ok(self, presented: str | None) -> bool:
        if not self.access_token:
            return True
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.access_token.encode())

    def check_signature(
        self, path: str, operation: str, username: str | None, signature: str | None,
        expiration: str | None,
    ) -> None:
        """A v1 signed-URL signature: `v1_` + base64(sha256("path:op:user:token[:exp]")) unpadded.
        Raises SignatureRejected in upstream's order: a malformed expiry (its parameter parser
        answers 400 before any handler), no signature, a wrong signature, then an expired one, so
        an expired URL says so only when it was genuine. Only meaningful while a token is set."""
        exp: int | None = None
        if expiration:
            try:
                exp = int(expiration)
            except ValueError:
                raise SignatureRejected(
                    400, f"Invalid format for parameter signature_expiration: {expiration!r} is not an integer",
                ) from None
        if not signature:
            raise SignatureRejected(401, "missing signature query parameter")
        raw = f"{path}:{operation}:{username or ''}:{self.access_token or ''}"
        if exp is not None:
            raw += f":{exp}"
        want = "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode()
        if not self.access_token or not hmac.compare_digest(signature.encode(), want.encode()):
            raise SignatureRejected(401, "invalid signature")
        if exp is not None and exp < time.time():
            raise SignatureRejected(401, "signature is already expired")

    # -- /init --------------------------------------------------------------------------------

    def apply(self, req: InitRequest) -> None:
        new_clone = bool(req.entropy) or (
            req.access_token is not None and (req.access_token or None) != self.access_token)
        if req.access_token is not None:
            self.access_token = req.access_token or None
        if req.env_vars is not None:
            self.env_vars = dict(req.env_vars)
        if req.default_user:
            self.default_user = req.default_user
        if req.default_workdir:
            self.default_workdir = req.default_workdir
        if req.sandbox_id:
            self.sandbox_id = req.sandbox_id
            jsonlog.tag(sandbox_id=req.sandbox_id)
        if req.timestamp is not None:
            set_clock(req.timestamp)
        if req.entropy:
            add_entropy(req.entropy)
        self.generation += 1
        if new_clone:
            self.reseed_generation += 1
        log.info("identity initialised", extra={
            "token_set": bool(self.access_token), "env_vars": len(self.env_vars),
            "default_user": self.default_user, "generation": self.generation,
            "reseed": new_clone,
        })
        for listener in self.listeners:
            listener()


_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def set_clock(unix_seconds: float) -> bool:
    """Steps CLOCK_REALTIME to the host's time after a restore; returns whether it stepped."""
    drift = unix_seconds - time.time()
    if abs(drift) < CLOCK_STEP_THRESHOLD_S:
        return False
    ts = _Timespec(int(unix_seconds), int((unix_seconds % 1) * 1e9))
    if _libc.clock_settime(0, ctypes.byref(ts)) != 0:
        err = ctypes.get_errno()
        log.warning("could not set the clock", extra={"error": os.strerror(err), "drift_s": drift})
        return False
    log.info("clock stepped", extra={"drift_s": round(drift, 3)})
    return True


def add_entropy(data: bytes) -> bool:
    """Mixes host-provided bytes into the kernel RNG and credits them (RNDADDENTROPY, root only),
    then forces a CRNG reseed (RNDRESEEDCRNG): clones restored from one snapshot would otherwise
    share RNG state, and since Linux 5.18 added entropy only reaches `getrandom`/`/dev/urandom`
    output at the next scheduled reseed (up to a minute later). The guest init forces one too,
    over the control channel, concurrently; doing it here as well means nothing that runs after
    /init answered (the kernels' own reseed included) depends on that ordering."""
    try:
        fd = os.open("/dev/urandom", os.O_WRONLY)
    except OSError as e:
        log.warning("no /dev/urandom for entropy", extra={"error": str(e)})
        return False
    try:
        buf = struct.pack("ii", len(data) * 8, len(data)) + data
        try:
            fcntl.ioctl(fd, RNDADDENTROPY, buf)
        except OSError:
            # Without CAP_SYS_ADMIN a plain write still mixes the bytes in (uncredited).
            os.write(fd, data)
        try:
            fcntl.ioctl(fd, RNDRESEEDCRNG)
        except OSError as e:  # no CAP_SYS_ADMIN, or a kernel older than 4.17
            log.debug("no forced crng reseed", extra={"error": str(e)})
        return True
    finally:
        os.close(fd)
