"""E2B template definitions: the steps of a `Template()` build, run in the build VM, each step's
disk cached by its inputs.

A definition build boots one VM whose writable layer is a qcow2 overlay on the longest cached
prefix of its steps (or on the base layer: a fresh writable layer for an image, the flattened disk
of the template it builds on), runs the remaining steps through the guest agent, and after each
step that may change the disk (RUN, COPY, WORKDIR) stops the VM for as long as a sparse copy of the
overlay takes (QEMU flushes its images on stop), which becomes that step's cached layer.

Invariants:
* A step's key is the hash of the previous key and the step's own inputs (type, args, files hash);
  the first key covers everything the base layer and the VM depend on. Equal keys mean equal disks
  and equal step state (user, workdir, env), so a cached entry may be taken whatever built it.
* An entry is its JSON (`<key>.json`, written last, atomically) naming its layer file and the step
  state; a layer file without its JSON is garbage. A layer is a qcow2 whose backing chain ends in a
  base layer of this cache; ENV and USER steps reuse the previous layer.
* Layers are only ever read by later builds through new overlays: nothing writes a cached file.
  Eviction (least recently used entries beyond the cache size) removes an entry with every entry
  whose chain reads through its layer.
* `force` on a step rebuilds it and every later step (their entries are replaced).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import posixpath
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cube_common.build_files import archive_path
from sdk.gen.cube.v1 import cubelet_pb2 as pb
from vmm_core import disks
from vmm_core.errors import ArtifactError

from . import build_file_fetch, guest_exec
from .guest_client import GuestAgentError, GuestEndpoint

STEP_TYPES = ("RUN", "COPY", "ENV", "WORKDIR", "USER")
# Steps that can change the disk: a layer is cut after each.
DISK_STEPS = ("RUN", "COPY", "WORKDIR")
HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
DEFAULT_USER = "user"
DEFAULT_WORKDIR = "/home/user"
MAX_CHAIN = 6  # overlays a build stacks before it flattens its start layer (the jail allows 8)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StepFailed(Exception):
    """A step (E2B label: "1".."N", or "finalize") failed; the message carries its output tail."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class StepState:
    """What the steps so far leave besides the disk: who and where the next step runs, its env."""
    user: str = DEFAULT_USER
    workdir: str = DEFAULT_WORKDIR
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> StepState:
        return cls(user=str(d["user"]), workdir=str(d["workdir"]), env={str(k): str(v) for k, v in d["env"].items()})


def guest_path(workdir: str, path: str) -> str:
    """``path`` in the guest, relative ones against the step's working directory."""
    return path if path.startswith("/") else posixpath.normpath(posixpath.join(workdir, path))


def step_label(index: int) -> str:
    """E2B's name of the step at 0-based ``index`` of the definition ("1" is the first)."""
    return str(index + 1)


def describe(step: pb.BuildStep) -> str:
    args = list(step.args)
    if step.type == "RUN":
        return f"RUN {args[0] if args else ''}" + (f" (as {args[1]})" if len(args) > 1 and args[1] else "")
    if step.type == "ENV":
        return "ENV " + " ".join(f"{args[i]}={args[i + 1]}" for i in range(0, len(args) - 1, 2))
    return f"{step.type} {' '.join(a for a in args if a)}"


def step_key(previous: str, step: pb.BuildStep) -> str:
    h = hashlib.sha256(previous.encode())
    h.update(json.dumps([step.type, list(step.args), step.files_hash]).encode())
    return h.hexdigest()[:32]


def check_steps(steps) -> None:
    """The cubelet's own check of a definition (the master checks it first): ValueError names the
    step."""
    for i, s in enumerate(steps):
        n, label = len(s.args), step_label(i)
        if s.type not in STEP_TYPES:
            raise ValueError(f"step {label}: unknown instruction {s.type!r}")
        if s.type == "RUN" and not 1 <= n <= 2:
            raise ValueError(f"step {label}: RUN takes a command and an optional user")
        if s.type == "COPY" and (not 2 <= n <= 4 or not HASH_RE.match(s.files_hash)):
            raise ValueError(f"step {label}: COPY takes src, dest, user, mode and the files' hash")
        if s.type == "ENV" and (n == 0 or n % 2):
            raise ValueError(f"step {label}: ENV takes name/value pairs")
        if s.type in ("WORKDIR", "USER") and (n != 1 or not s.args[0]):
            raise ValueError(f"step {label}: {s.type} takes one argument")
        users = [s.args[0]] if s.type == "USER" else [s.args[1]] if s.type == "RUN" and n > 1 and s.args[1] else \
            [s.args[2].split(":")[0]] if s.type == "COPY" and n > 2 and s.args[2] else []
        for u in users:
            if not USER_RE.match(u):
                raise ValueError(f"step {label}: invalid user name {u!r}")


# ---- the layer cache ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    key: str
    layer: str           # file name in the cache dir (a base layer or a qcow2)
    state: StepState
    chain: tuple[str, ...]  # layer file names from the base up to `layer`


class LayerCache:
    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def path(self, name: str) -> Path:
        return self.root / name

    def get(self, key: str) -> Entry | None:
        meta = self.root / f"{key}.json"
        entry = self.get_quiet(meta)
        if entry is None:
            return None
        if not all((self.root / f).is_file() for f in entry.chain):
            return None
        os.utime(meta)  # recently used
        return entry

    def put(self, entry: Entry) -> None:
        tmp = self.root / f".{entry.key}.json.tmp"
        tmp.write_text(json.dumps({"layer": entry.layer, "state": entry.state.to_json(), "chain": list(entry.chain),
                                   "at": time.time()}))
        os.replace(tmp, self.root / f"{entry.key}.json")

    def entries(self) -> list[tuple[float, Entry]]:
        out = []
        for meta in self.root.glob("*.json"):
            e = self.get_quiet(meta)
            if e is not None:
                out.append((meta.stat().st_mtime, e))
        return out

    def get_quiet(self, meta: Path) -> Entry | None:
        try:
            d = json.loads(meta.read_text())
            return Entry(meta.stem, d["layer"], StepState.from_json(d["state"]), tuple(d["chain"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def evict(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Least recently used entries (and what reads through their layers) until the files fit
        ``max_bytes``; layers named in ``keep`` (a build's own chain) stay. Also removes files no
        entry names."""
        entries = sorted(self.entries(), key=lambda t: t[0])
        named = {f for _, e in entries for f in e.chain}
        for f in self.root.iterdir():
            if f.name.startswith(".") or f.suffix == ".json":
                continue
            if f.name not in named and f.name not in keep and time.time() - f.stat().st_mtime > 3600:
                f.unlink(missing_ok=True)
        removed: list[str] = []

        def size() -> int:
            return sum(f.stat().st_blocks * 512 for f in self.root.iterdir() if f.is_file())

        while entries and size() > self.max_bytes:
            _, victim = entries.pop(0)
            if victim.layer in keep:
                continue
            gone = {e.key for _, e in entries if victim.layer in e.chain} | {victim.key}
            for key in gone:
                (self.root / f"{key}.json").unlink(missing_ok=True)
            entries = [(t, e) for t, e in entries if e.key not in gone]
            still = {f for _, e in entries for f in e.chain} | keep
            for name in set(victim.chain) - still:
                (self.root / name).unlink(missing_ok=True)
            removed.extend(gone)
        return removed


@dataclass(frozen=True)
class Plan:
    start: Entry           # the layer the build VM's overlay reads through
    first: int             # index of the first step to run
    keys: tuple[str, ...]  # key after each step


def plan(cache: LayerCache, base: Entry, steps) -> Plan:
    """The longest cached prefix of ``steps`` on ``base`` (a forced step and what follows it is
    never taken from the cache)."""
    keys, key = [], base.key
    for s in steps:
        key = step_key(key, s)
        keys.append(key)
    start, first = base, 0
    for i, s in enumerate(steps):
        if s.force:
            break
        hit = cache.get(keys[i])
        if hit is None:
            break
        start, first = hit, i + 1
    return Plan(start, first, tuple(keys))


def qemu_img_convert(src: Path, dest: Path, fmt: str) -> None:
    """``src`` with its whole backing chain as one standalone image at ``dest``, whole or not at all."""
    _whole_or_nothing(dest, lambda tmp: disks.flatten(src, tmp, fmt))


def _whole_or_nothing(dest: Path, make: Callable[[Path], object]) -> None:
    """``make(tmp)`` writes a file next to ``dest``, renamed onto it once whole; a failure leaves
    neither (OSError, with what vmm_core's disk helper said)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        make(tmp)
    except ArtifactError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(str(e)) from e
    os.replace(tmp, dest)


# ---- running steps -----------------------------------------------------------------------------

Emit = Callable[[str, bool], Awaitable[None]]   # (line, is_stderr)


@dataclass
class Runner:
    """Runs a definition's steps, one at a time, in a build VM through its agent (``ep``); COPY
    reads the team's archives under ``files_dir``. Cutting layers is the VM owner's (templates.py).
    Commands see ``base_env`` (the image's ENV, or the base template's), then the steps' ENV, as
    Docker's RUN sees the image's; the base is the image's, which the first step key covers."""
    ep: GuestEndpoint
    files_dir: Path | None
    files_team: str
    step_timeout_s: float = 1800.0
    shell: tuple[str, ...] = ("/bin/sh", "-c")
    base_env: dict[str, str] = field(default_factory=dict)
    # Where a COPY archive missing from files_dir comes from (build_file_fetch.py).
    fetcher: build_file_fetch.Fetcher | None = None

    async def detect_shell(self) -> None:
        """bash (as E2B runs commands) when the image has it, else sh."""
        done = await guest_exec.run(self.ep, ["/bin/sh", "-c", "command -v bash"], user="root", env={"PATH": PATH},
                                    cwd="/", timeout=60)
        self.shell = ("/bin/bash", "-l", "-c") if done.exit_code == 0 else ("/bin/sh", "-c")

    def _env(self, state: StepState) -> dict[str, str]:
        return {"PATH": PATH, **self.base_env, **state.env}

    async def _sh(self, label: str, script: str, *, user: str, state: StepState, emit: Emit,
                  env: dict[str, str] | None = None, cwd: str | None = None) -> None:
        tail: list[str] = []

        async def keep(line: str, err: bool) -> None:
            tail.append(line)
            del tail[:-40]
            await emit(line, err)

        done = await guest_exec.run(self.ep, [*self.shell, script], user=user, env={**self._env(state), **(env or {})},
                                    cwd=cwd if cwd is not None else state.workdir, on_line=keep,
                                    timeout=self.step_timeout_s)
        if done.exit_code != 0:
            why = done.error or done.status or f"exit status {done.exit_code}"
            out = "\n".join(tail[-20:])
            raise StepFailed(label, f"{why}" + (f"\n{out}" if out else ""))

    async def run_step(self, index: int, step: pb.BuildStep, state: StepState, emit: Emit) -> StepState:
        label, args = step_label(index), list(step.args)
        try:
            if step.type == "RUN":
                user = args[1] if len(args) > 1 and args[1] else state.user
                await self._sh(label, args[0], user=user, state=state, emit=emit)
                return state
            if step.type == "ENV":
                env = dict(state.env)
                for i in range(0, len(args) - 1, 2):
                    env[args[i]] = args[i + 1]
                return replace(state, env=env)
            if step.type == "WORKDIR":
                path = guest_path(state.workdir, args[0])
                await self._sh(label, 'mkdir -p -- "$D" && chown -- "$O" "$D" 2>/dev/null; true', user="root",
                               state=state, emit=emit, env={"D": path, "O": state.user}, cwd="/")
                return replace(state, workdir=path)
            if step.type == "USER":
                await self._sh(label, 'id -u -- "$U" >/dev/null 2>&1 || { echo "no user \'$U\' in the image" >&2; '
                               'exit 1; }', user="root", state=state, emit=emit, env={"U": args[0]}, cwd="/")
                return replace(state, user=args[0])
            if step.type == "COPY":
                await self._copy(label, step, state, emit)
                return state
        except GuestAgentError as e:
            raise StepFailed(label, str(e)) from e
        raise StepFailed(label, f"unknown instruction {step.type!r}")

    async def _copy(self, label: str, step: pb.BuildStep, state: StepState, emit: Emit) -> None:
        args = list(step.args) + ["", ""]
        src, dest, owner, mode = args[0], args[1], args[2], args[3]
        archive = archive_path(self.files_dir, self.files_team, step.files_hash) if self.files_dir else None
        fetched = False
        if archive is None or not archive.is_file():
            if not step.files_url or self.fetcher is None:
                raise StepFailed(label, f"the files of COPY {src} (hash {step.files_hash}) were never uploaded")
            try:
                archive = await self.fetcher.fetch(step.files_url, step.files_hash)
            except build_file_fetch.FetchError as e:
                raise StepFailed(label, f"the files of COPY {src} (hash {step.files_hash}): {e}") from e
            fetched = True
        if not dest.startswith("/"):
            dest = guest_path(state.workdir, dest) + ("/" if dest.endswith("/") else "")
        staged = f"/tmp/.cube-copy-{step.files_hash[:16]}.tar"
        try:
            await guest_exec.upload(self.ep, archive, staged, user="root")
        finally:
            if fetched:
                archive.unlink(missing_ok=True)
        await self._sh(label, _COPY_SCRIPT, user="root", state=state, emit=emit, cwd="/",
                       env={"CUBE_TAR": staged, "CUBE_SRC": src, "CUBE_DEST": dest,
                            "CUBE_OWNER": owner or state.user, "CUBE_MODE": mode})

    async def start(self, cmd: str, state: StepState) -> None:
        try:
            await guest_exec.start_background(self.ep, [*self.shell, cmd], user=state.user, env=self._env(state),
                                              cwd=state.workdir)
        except GuestAgentError as e:
            raise StepFailed("finalize", f"the start command did not start: {e}") from e

    async def wait_ready(self, cmd: str, state: StepState, timeout: float, emit: Emit) -> None:
        """Run the ready command until it exits 0 (E2B's readyCmd), at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        lines: list[str] = []

        async def keep(line: str, _err: bool) -> None:
            lines.append(line)
            del lines[:-20]

        while True:
            lines.clear()
            try:
                done = await guest_exec.run(self.ep, [*self.shell, cmd], user=state.user, env=self._env(state),
                                            cwd=state.workdir, on_line=keep, timeout=max(5.0, min(60.0, timeout)))
            except GuestAgentError as e:
                raise StepFailed("finalize", f"the ready command could not run: {e}") from e
            if done.exit_code == 0:
                return
            if time.monotonic() >= deadline:
                out = "\n".join(lines)
                raise StepFailed("finalize", f"the ready command {cmd!r} did not succeed within {timeout:g}s "
                                 f"(last: {done.status or done.exit_code})" + (f"\n{out}" if out else ""))
            await asyncio.sleep(1.0)


# Docker's COPY rules, for an archive holding paths relative to the SDK's context directory: a
# directory's contents go into dest; files go into dest when it ends in '/', is a directory or
# several match; else a single file becomes dest. Owner and mode apply to what was copied only.
_COPY_SCRIPT = r"""
set -eu
t=$(mktemp -d)
trap 'rm -rf "$t" "$CUBE_TAR"' EXIT
tar -xf "$CUBE_TAR" -C "$t" --no-same-owner
cd "$t"
n=0
for m in $CUBE_SRC; do if [ -e "$m" ] || [ -L "$m" ]; then n=$((n+1)); fi; done
if [ "$n" -eq 0 ]; then echo "COPY: nothing in the upload matches '$CUBE_SRC'" >&2; exit 1; fi
todir=0
case "$CUBE_DEST" in */) todir=1;; esac
if [ -d "$CUBE_DEST" ] || [ "$n" -gt 1 ]; then todir=1; fi
# A user without a group takes the user's login group (chown's "user:").
case "$CUBE_OWNER" in *:*) owner=$CUBE_OWNER;; "") owner="";; *) owner="$CUBE_OWNER:";; esac
apply() {
  if [ -n "$CUBE_OWNER" ]; then chown -h -- "$owner" "$1"; fi
  if [ -n "$CUBE_MODE" ] && [ ! -L "$1" ]; then chmod -- "$CUBE_MODE" "$1"; fi
}
for m in $CUBE_SRC; do
  if ! [ -e "$m" ] && ! [ -L "$m" ]; then continue; fi
  if [ -d "$m" ] && [ ! -L "$m" ]; then
    mkdir -p -- "$CUBE_DEST"
    cp -a -- "$m/." "$CUBE_DEST/"
    (cd "$m" && find . -mindepth 1) | while IFS= read -r p; do apply "$CUBE_DEST/$p"; done
  elif [ "$todir" -eq 1 ]; then
    mkdir -p -- "$CUBE_DEST"
    cp -a -- "$m" "$CUBE_DEST/"
    apply "${CUBE_DEST%/}/$(basename -- "$m")"
  else
    mkdir -p -- "$(dirname -- "$CUBE_DEST")"
    cp -a -- "$m" "$CUBE_DEST"
    apply "$CUBE_DEST"
  fi
done
"""


def copy_sparse(src: Path, dest: Path) -> None:
    """A sparse copy of ``src`` at ``dest``, whole or not at all."""
    _whole_or_nothing(dest, lambda tmp: disks.copy_sparse(src, tmp))
