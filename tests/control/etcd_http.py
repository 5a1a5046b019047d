"""Synchronous etcd access for tests, through etcd's JSON gateway (/v3/kv/*): the tests look at
and seed the cluster state without an event loop of their own.

With ``tls`` (an etcd that requires client certificates), it speaks https presenting that
certificate and checks etcd's by its role's name (etcd's certificate names no address)."""

from __future__ import annotations

import base64
import json

import httpx

from cube_common.mtls import TlsFiles
from testkit.etcd import gateway_tls


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def _prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return _b64(bytes(b))


class EtcdHttp:
    def __init__(self, endpoint: str, timeout: float = 5.0, tls: TlsFiles | None = None):
        self.base = f"{'https' if tls else 'http'}://{endpoint}"
        verify, self.extensions = gateway_tls(tls)
        self.http = httpx.Client(timeout=timeout, verify=verify)

    def _post(self, path: str, body: dict) -> dict:
        r = self.http.post(self.base + path, json=body, extensions=self.extensions)
        r.raise_for_status()
        return r.json()

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self._post("/v3/kv/put", body)["header"]["revision"])

    def get(self, key: str) -> bytes | None:
        kvs = self._post("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def get_json(self, key: str) -> dict | None:
        v = self.get(key)
        return json.loads(v) if v is not None else None

    def prefix(self, prefix: str) -> dict[str, bytes]:
        kvs = self._post("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)}).get("kvs", [])
        return {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")) for kv in kvs}

    def keys(self, prefix: str) -> list[str]:
        return sorted(self.prefix(prefix))

    def delete_prefix(self, prefix: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})

    def delete(self, key: str) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(key)})

    def close(self) -> None:
        self.http.close()
