"""Running one cell in a context and turning the kernel's iopub messages into /execute lines.

An execution runs as its own task that feeds a queue; the HTTP response only consumes it. A
client that goes away (or times out) interrupts the kernel, but the task still finishes the
cell's bookkeeping, so the context's lock, per-execution env vars and iopub stream stay right
for the next caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shlex
from queue import Empty

from . import e2b_formats, identity_hook, messages as out
from .contexts import Context, ContextRegistry
from .kernels import Kernel, KernelStartError, Language

log = logging.getLogger("envd.execute")

POLL_S = 0.5
# After an interrupt, a kernel that does not get back to idle within this long is restarted.
INTERRUPT_GRACE_S = 5.0
SILENT_TIMEOUT_S = 30.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Python kernels' e2b/chart and e2b/data formats (e2b_formats.py), installed with their one-time
# set-up. Made at import, while the agent still sees its own files: it enters the root later.
_E2B_FORMATS_CODE = e2b_formats.install_code()


# -- env var snippets, per language -------------------------------------------------------------

def _set_env_code(language: Language, env: dict[str, str], save: bool) -> str:
    if language is Language.PYTHON:
        lit = json.dumps(env)
        head = "import os as __cube_os\n"
        if save:
            head += f"__cube_saved_env = {{k: __cube_os.environ.get(k) for k in {json.dumps(list(env))}}}\n"
        return head + f"__cube_os.environ.update({lit})\n"
    if language is Language.JAVASCRIPT:
        lit = json.dumps(env)
        code = ""
        if save:
            names = json.dumps(list(env))
            code += f"globalThis.__cubeSavedEnv = Object.fromEntries({names}.map(k => [k, process.env[k]]));\n"
        return code + f"Object.assign(process.env, {lit}); undefined;\n"
    lines = []
    for i, (k, v) in enumerate(env.items()):
        if save:
            lines.append(f'if [ -n "${{{k}+x}}" ]; then __cube_old_{i}="${k}"; __cube_had_{i}=1; '
                         f"else __cube_had_{i}=0; fi")
        lines.append(f"export {k}={shlex.quote(v)}")
    return "\n".join(lines) + "\n"


def _restore_env_code(language: Language, env: dict[str, str]) -> str:
    if language is Language.PYTHON:
        return ("for __k, __v in __cube_saved_env.items():\n"
                "    if __v is None: __cube_os.environ.pop(__k, None)\n"
                "    else: __cube_os.environ[__k] = __v\n"
                "del __k, __v, __cube_saved_env\n")
    if language is Language.JAVASCRIPT:
        return ("for (const [k, v] of Object.entries(globalThis.__cubeSavedEnv || {})) {"
                " if (v === undefined) delete process.env[k]; else process.env[k] = v; }"
                " delete globalThis.__cubeSavedEnv; undefined;\n")
    lines = []
    for i, k in enumerate(env):
        lines.append(f'if [ "$__cube_had_{i}" = 1 ]; then export {k}="$__cube_old_{i}"; '
                     f"else unset {k}; fi; unset __cube_old_{i} __cube_had_{i}")
    return "\n".join(lines) + "\n"


# -- RNG reseeding after a restore -------------------------------------------------------------
#
# Sandboxes are clones of one snapshot taken with the default kernels already running, so every
# clone's kernels start out with the same in-memory RNG state. After an /init that marks a new
# clone (Identity.reseed_generation), each running kernel gets this silently before its next cell.
# By then /init has answered, so the guest kernel's CRNG was reseeded (identity.add_entropy) and
# os.urandom in the kernel is the clone's own.
#
# Python: the `random` module's shared instance; numpy's legacy global RandomState only if
# `numpy.random` is already imported (importing it later seeds it freshly, and a kernel that did
# not import numpy must not start doing so); tempfile's name sequence (a Random() seeded on first
# use and reseeded only when the pid changes, which a clone's does not). Out of reach: other
# Random / numpy Generator objects that already existed in the snapshot, and str hashing
# (PYTHONHASHSEED is fixed at interpreter start).
#
# JavaScript: nothing applies. Math.random is V8's xorshift128+ state, seeded from the node
# process's entropy source when the isolate was created, and JS has no way to reseed it. `crypto`
# (randomBytes, getRandomValues, randomUUID) draws from OpenSSL's DRBG inside the node process,
# which node already instantiated at startup (it seeds V8 from it): OpenSSL reseeds it from the
# OS only on a pid change, after 2^16 requests or 7 minutes after its last reseed, so in a clone
# of a snapshot younger than that it repeats the other clones' output; randomUUID also serves
# from a cache of 128 UUIDs pre-generated at its first call. Only a new node process is fresh,
# and kernels are not restarted for this (their state is the user's): per-clone unique values in
# a restored JS context come from /dev/urandom (fs.readSync into a Buffer) or a restarted context.
#
# Bash: `RANDOM=<n>` seeds $RANDOM's generator (if RANDOM is still the special variable). $SRANDOM
# (bash 5.1+) reads getrandom() and needs nothing.

_PYTHON_RESEED = """\
def __cube_reseed():
    import random, sys
    random.seed()
    np_random = sys.modules.get("numpy.random")
    if np_random is not None:
        try:
            np_random.seed()
        except Exception:
            pass
    tempfile = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile._name_sequence = None
__cube_reseed()
del __cube_reseed
"""


def _reseed_code(language: Language) -> str | None:
    """Silent code that gives a kernel fresh user-visible RNG state, or None if nothing applies."""
    if language is Language.PYTHON:
        return _PYTHON_RESEED
    if language is Language.BASH:
        # bash masks the seed to INT_MAX; the agent's own urandom is already the clone's.
        return f'if [ -n "${{RANDOM+x}}" ]; then RANDOM={secrets.randbits(31)}; fi\n'
    return None  # JavaScript: see above


def valid_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if _ENV_NAME.match(k)}


# -- kernel messaging ---------------------------------------------------------------------------

class KernelDied(Exception):
    pass


async def _run_silent(kernel: Kernel, code: str) -> None:
    """Runs bookkeeping code that must not show up in the cell's output or history."""
    client = kernel.client
    assert client is not None
    msg_id = client.execute(code, silent=True, store_history=False, allow_stdin=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SILENT_TIMEOUT_S
    while loop.time() < deadline:
        try:
            reply = await client.get_shell_msg(timeout=POLL_S)
        except Empty as e:
            if not kernel.alive():
                raise KernelDied() from e
            continue
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            return
    log.warning("silent execution timed out", extra={"kernel": kernel.id})


async def catch_up(registry: ContextRegistry, ctx: Context, kernel: Kernel) -> None:
    """/init came after this kernel started: give it the sandbox env vars and, for a new clone,
    fresh RNG state. Python kernels get a hook that does this by itself before every cell
    (identity_hook.py), installed here with one silent execution the first time, which also
    installs E2B's result formats (e2b_formats.py). Other kernels get one silent execution
    whenever the identity changed. Called with ``ctx.lock`` held, before every cell."""
    identity = registry.identity
    env_generation, seed_generation = identity.generation, identity.reseed_generation
    setup = ""
    if not ctx.identity_hook:
        if ctx.env_generation != env_generation and identity.env_vars:
            setup += _set_env_code(ctx.language, valid_env(identity.env_vars), save=False)
        if ctx.seed_generation != seed_generation:
            setup += _reseed_code(ctx.language) or ""
        if ctx.language is Language.PYTHON:
            setup += identity_hook.install_code(registry.launch.runtime_dir, _PYTHON_RESEED)
            setup += _E2B_FORMATS_CODE
    if setup:
        await _run_silent(kernel, setup)
    if ctx.language is Language.PYTHON:
        ctx.identity_hook = True
    ctx.env_generation, ctx.seed_generation = env_generation, seed_generation


class Execution:
    def __init__(self, registry: ContextRegistry, ctx: Context, code: str,
                 env_vars: dict[str, str] | None, history: bool = True) -> None:
        self.registry = registry
        self.ctx = ctx
        self.code = code
        # False for the agent's own cells (warm-up): no execution count, no In/Out history.
        self.history = history
        self.env_vars = valid_env(env_vars or {})
        self.lines: asyncio.Queue[out.OutputLine | None] = asyncio.Queue()
        self._interrupted_at: float | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    def interrupt(self) -> None:
        """The client is gone or gave up: stop the cell."""
        if self._interrupted_at is None:
            self._interrupted_at = asyncio.get_running_loop().time()
            if self.ctx.kernel is not None:
                self.ctx.kernel.interrupt()

    def _emit(self, line: out.OutputLine) -> None:
        self.lines.put_nowait(line)

    async def _run(self) -> None:
        try:
            async with self.ctx.lock:
                await self._run_locked()
        except KernelStartError as e:
            self._emit(out.error("KernelStartError", str(e), str(e)))
        except Exception as e:
            log.exception("execution failed", extra={"context": self.ctx.id})
            self._emit(out.error(type(e).__name__, str(e), str(e)))
        finally:
            self._emit(out.end_of_execution())
            self.lines.put_nowait(None)

    async def _run_locked(self) -> None:
        ctx = self.ctx
        await self.registry.wait_ready(ctx)
        kernel = ctx.kernel
        assert kernel is not None
        try:
            await catch_up(self.registry, ctx, kernel)
            if self.env_vars:
                # The hook would apply a newer sandbox env at this cell's start, over the cell's own
                # variables: apply it now, in the same silent execution, so the cell's win.
                sync = identity_hook.SYNC_CALL if ctx.identity_hook else ""
                await _run_silent(kernel, sync + _set_env_code(ctx.language, self.env_vars, save=True))
            try:
                await self._cell(kernel)
            finally:
                if self.env_vars and kernel.alive() and self._interrupted_at is None:
                    await _run_silent(kernel, _restore_env_code(ctx.language, self.env_vars))
        except KernelDied:
            self._emit(out.error(
                "KernelDied",
                "The kernel died unexpectedly (it was restarted; its state is lost).",
                "The kernel process exited during the execution.",
            ))
            # The next execution in this context finds the kernel dead and starts a new one.

    async def _cell(self, kernel: Kernel) -> None:
        client = kernel.client
        assert client is not None
        loop = asyncio.get_running_loop()
        msg_id = client.execute(self.code, silent=False, store_history=self.history, allow_stdin=False,
                                stop_on_error=True)
        saw_error = False
        while True:
            try:
                msg = await client.get_iopub_msg(timeout=POLL_S)
            except Empty as e:
                if not kernel.alive():
                    raise KernelDied() from e
                if (self._interrupted_at is not None
                        and loop.time() - self._interrupted_at > INTERRUPT_GRACE_S):
                    log.warning("kernel ignored the interrupt; killing it", extra={"context": self.ctx.id})
                    await kernel.stop()  # the next execution starts a fresh one
                    self._emit(out.error("KernelRestarted",
                                         "The execution did not stop when interrupted; the kernel was restarted.",
                                         ""))
                    return
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            mtype, content = msg["msg_type"], msg["content"]
            if mtype == "execute_input":
                self._emit(out.number_of_executions(int(content.get("execution_count") or 0)))
            elif mtype == "stream":
                text = content.get("text", "")
                self._emit(out.stderr(text) if content.get("name") == "stderr" else out.stdout(text))
            elif mtype == "execute_result":
                self._emit(out.result(content.get("data", {}), is_main_result=True))
            elif mtype == "display_data":
                self._emit(out.result(content.get("data", {}), is_main_result=False))
            elif mtype == "error":
                saw_error = True
                self._emit(out.error(content.get("ename", "Error"), content.get("evalue", ""),
                                     "\n".join(content.get("traceback", []))))
            elif mtype == "status" and content.get("execution_state") == "idle":
                break
        # The shell reply closes the request; it also carries errors some kernels only report there.
        deadline = loop.time() + 2.0
        while loop.time() < deadline:
            try:
                reply = await client.get_shell_msg(timeout=0.2)
            except Empty:
                break
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            c = reply.get("content", {})
            if c.get("status") == "error" and not saw_error:
                self._emit(out.error(c.get("ename", "Error"), c.get("evalue", ""),
                                     "\n".join(c.get("traceback", []))))
            elif c.get("status") == "aborted" and not saw_error:
                self._emit(out.error("ExecutionAborted", "the execution was aborted", ""))
            break


# -- priming ------------------------------------------------------------------------------------
#
# Under TCG a clone starts in a fresh QEMU whose translation cache is empty, so the first cell in a
# clone pays for translating the kernel's and the agent's whole execute path (0.5-0.7 s on these
# machines, against ~90 ms for a later cell), and before it any catch-up above. Priming moves both
# off the user's first cell: right after every /init the running kernels catch up in the background
# (for a Python kernel with its hook, nothing to run), and the host's warm pool asks for a
# throwaway cell (no history, output dropped) in each default kernel before it pools the clone.
# Translated code lives in the QEMU process, so what a pooled clone warmed stays warm for the
# sandbox that claims it.

WARM_CODE = {Language.PYTHON: "print(1)\n"}


async def prime_context(registry: ContextRegistry, ctx: Context, warm: bool) -> None:
    kernel = ctx.kernel
    if kernel is None or not kernel.alive():
        return  # not started (or dead): it catches up when its first cell starts it
    code = WARM_CODE.get(ctx.language) if warm else None
    if code is not None:
        execution = Execution(registry, ctx, code, None, history=False)
        execution.start()  # catches up first, like any cell; its lines are dropped
        assert execution.task is not None
        await execution.task
        return
    async with ctx.lock:
        if ctx.kernel is kernel and kernel.alive():
            try:
                await catch_up(registry, ctx, kernel)
            except KernelDied:
                pass  # the next cell reports it


async def prime_contexts(registry: ContextRegistry, warm: bool) -> None:
    """Catch every running kernel up with the identity now (``warm``: also run a throwaway cell in
    each default one). Failures are logged, never raised: priming only saves time."""
    contexts = [c for c in registry.list() if c.is_default or not warm]
    results = await asyncio.gather(*(prime_context(registry, c, warm) for c in contexts), return_exceptions=True)
    for ctx, r in zip(contexts, results, strict=True):
        if isinstance(r, Exception):
            log.warning("priming a context failed", extra={"context": ctx.id, "error": repr(r)})
