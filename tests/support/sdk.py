"""The E2B SDK's process-wide connection pools, for tests that point it at more than one server.

Since 2.x the SDK builds one pyqwest (reqwest/rustls) pool per proxy/timeout/HTTP-version key and keeps
it for the life of the process; the trusted roots (system store plus `SSL_CERT_FILE`) are read when the
pool is built. A user's process sets `SSL_CERT_FILE` before its first call and never notices. A
pytest process does not: earlier packages drive the SDK against their own plain-HTTP servers, so
the pool already exists, without our CA, by the time the e2e package switches the SDK to the node.
Dropping the pools makes the next call build them from the environment as it is now, exactly as a
fresh user process would.
"""
from __future__ import annotations

import importlib

_POOL_CACHES = ("_transports", "_pools", "_httpx_transports")


def drop_sdk_connection_pools() -> None:
    for module_name in ("e2b.api.client_sync", "e2b.api.client_async"):
        module = importlib.import_module(module_name)
        lock = getattr(module, "_transport_lock", None)
        found = [getattr(module, name, None) for name in _POOL_CACHES]
        caches = [c for c in found if isinstance(c, dict)]
        if lock is None or len(caches) != len(found):
            # A newer SDK keeps its pools elsewhere: say so instead of failing later with a TLS error.
            raise AssertionError(f"{module_name} no longer has {_POOL_CACHES}; update tests/support/sdk.py "
                                 "for this SDK version")
        with lock:
            for cache in caches:
                cache.clear()
