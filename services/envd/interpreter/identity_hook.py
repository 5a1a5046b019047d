"""The sandbox identity for Python kernels, applied inside the kernel instead of by a round trip.

After every /init the agent writes the identity that kernels need (the sandbox env vars and the
reseed generation) to one file in its runtime dir. Each Python kernel carries a `pre_run_cell`
hook, installed with its first catch-up, that applies a changed file before the next cell runs:
`os.environ` takes the env vars and the user-visible RNGs are reseeded (execute.py says which).
The file check is one stat() per cell, so a clone's first cell no longer waits for a separate
silent execution (about 60 ms under TCG). Silent executions do not fire the hook; a cell with its
own env vars calls the hook's sync first, so that its variables win over the sandbox's.
"""
from __future__ import annotations

import json
import os

FILE_NAME = "identity.json"
# Called (silently) before a cell's own env vars are set; see the module docstring.
SYNC_CALL = "get_ipython()._cube_identity_sync()\n"


def file_path(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, FILE_NAME)


def write(runtime_dir: str, env: dict[str, str], env_generation: int, reseed_generation: int) -> None:
    """Replace the file atomically (a kernel never reads half of it); readable by the kernels' user."""
    path = file_path(runtime_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"env": env, "env_generation": env_generation, "reseed_generation": reseed_generation}, f)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def install_code(runtime_dir: str, reseed_source: str) -> str:
    """Silent Python that registers the hook; it leaves no name in the user's namespace."""
    return f"""\
def __cube_install_identity_hook():
    import json, os
    path = {file_path(runtime_dir)!r}
    reseed_source = {reseed_source!r}
    seen = {{"stamp": None, "env": None, "seed": None}}

    def sync(*_):
        try:
            st = os.stat(path)
        except OSError:
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == seen["stamp"]:
            return
        try:
            with open(path, encoding="utf-8") as f:
                ident = json.load(f)
        except (OSError, ValueError):
            return
        seen["stamp"] = stamp
        if ident.get("env_generation") != seen["env"]:
            seen["env"] = ident.get("env_generation")
            os.environ.update(ident.get("env") or {{}})
        if ident.get("reseed_generation") != seen["seed"]:
            seen["seed"] = ident.get("reseed_generation")
            exec(reseed_source, {{}})

    ip = get_ipython()
    old = getattr(ip, "_cube_identity_sync", None)
    if old is not None:
        ip.events.unregister("pre_run_cell", old)
    ip._cube_identity_sync = sync
    ip.events.register("pre_run_cell", sync)
__cube_install_identity_hook()
del __cube_install_identity_hook
"""
