"""One plain HTTP/1.0 request from inside a network namespace: how tests and benchmarks talk to a
guest or a lab host without routing anything through the host's own namespace.

Invariants: the socket is opened in the namespace (``cube_common.netns``) and always closed; the
reply is read to EOF (HTTP/1.0), so the caller gets the whole body or an ``OSError``.
"""
from __future__ import annotations

from cube_common import netns


def request(ns: str, host: str, port: int, method: str = "GET", path: str = "/", body: bytes = b"", *,
            headers: dict[str, str] | None = None, bind: str | None = None,
            timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of one request to ``host:port`` from inside ``ns``, optionally from the bound
    source address ``bind``. OSError when there is no well-formed HTTP reply."""
    s = netns.socket_in(ns)
    try:
        s.settimeout(timeout)
        if bind:
            s.bind((bind, 0))
        s.connect((host, port))
        lines = [f"{method} {path} HTTP/1.0", "Host: guest", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    finally:
        s.close()
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:  # some minimal servers end lines with \n alone
        head, _, rest = data.partition(b"\n\n")
    status_line = head.split(b"\n", 1)[0]
    try:
        if not status_line.startswith(b"HTTP/1."):
            raise ValueError
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise OSError(f"bad response to {method} {path}: {data[:200]!r}") from None
    return status, rest


def get_text(ns: str, host: str, port: int, path: str = "/", *, bind: str | None = None,
             timeout: float = 5.0) -> str:
    """The body of a GET that must answer 200, as stripped text; OSError otherwise."""
    status, body = request(ns, host, port, "GET", path, bind=bind, timeout=timeout)
    if status != 200:
        raise OSError(f"GET {path} answered {status}: {body[:200]!r}")
    return body.decode().strip()
