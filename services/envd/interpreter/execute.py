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
import secrets
from queue import Empty

from . import e2b_formats, identity_hook, messages as out, snippets
from .contexts import Context, ContextRegistry
from .kernels import DENO_LANGUAGES, Kernel, KernelStartError, Language

log = logging.getLogger("envd.execute")

POLL_S = 0.5
# After an interrupt, a kernel that does not get back to idle within this long is restarted.
INTERRUPT_GRACE_S = 5.0
SILENT_TIMEOUT_S = 30.0
# How long a Deno cell's output fence (Execution._fence) may take before the cell ends anyway.
FENCE_TIMEOUT_S = 5.0
# Python kernels' e2b/chart and e2b/data formats (e2b_formats.py), installed with their one-time
# set-up. Made at import, while the agent still sees its own files: it enters the root later.
_E2B_FORMATS_CODE = e2b_formats.install_code()


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
    whenever the identity changed, the first one after their language's prelude (snippets.py).
    Called with ``ctx.lock`` held, before every cell."""
    identity = registry.identity
    env_generation, seed_generation = identity.generation, identity.reseed_generation
    setup = ""
    if not ctx.prelude_done:
        setup += snippets.prelude(ctx.language)
    if not ctx.identity_hook:
        if ctx.env_generation != env_generation and identity.env_vars:
            setup += snippets.set_env(ctx.language, snippets.valid_env(identity.env_vars), save=False)
        if ctx.seed_generation != seed_generation:
            setup += snippets.reseed(ctx.language) or ""
        if ctx.language is Language.PYTHON:
            setup += identity_hook.install_code(registry.launch.runtime_dir, snippets.PYTHON_RESEED)
            setup += _E2B_FORMATS_CODE
    if setup:
        await _run_silent(kernel, setup)
    if ctx.language is Language.PYTHON:
        ctx.identity_hook = True
    ctx.prelude_done = True
    ctx.env_generation, ctx.seed_generation = env_generation, seed_generation


class Execution:
    def __init__(self, registry: ContextRegistry, ctx: Context, code: str,
                 env_vars: dict[str, str] | None, history: bool = True) -> None:
        self.registry = registry
        self.ctx = ctx
        self.code = code
        # False for the agent's own cells (warm-up): no execution count, no In/Out history.
        self.history = history
        self.env_vars = snippets.valid_env(env_vars or {})
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
        died = await self.registry.wait_ready(ctx)
        if died is not None:
            # E2B's interpreter, too, answers the call after a kernel died with an error, not with
            # a result computed without the state the code expects.
            self._emit(out.error(
                "KernelRestarted",
                f"The {ctx.language.value} kernel had died (exit status {died}) and was restarted: its state "
                "is lost and this code was not run. Run it again.",
                f"The kernel process exited between executions with status {died}."))
            return
        kernel = ctx.kernel
        assert kernel is not None
        kernel.thaw()
        if self.history and self.code.strip():
            ctx.used = True
        try:
            await self._run_kernel(ctx, kernel)
        finally:
            if ctx.in_reserve:
                kernel.freeze()

    async def _run_kernel(self, ctx: Context, kernel: Kernel) -> None:
        try:
            await catch_up(self.registry, ctx, kernel)
            if self.env_vars:
                # The hook would apply a newer sandbox env at this cell's start, over the cell's own
                # variables: apply it now, in the same silent execution, so the cell's win.
                sync = identity_hook.SYNC_CALL if ctx.identity_hook else ""
                await _run_silent(kernel, sync + snippets.set_env(ctx.language, self.env_vars, save=True))
            try:
                await self._cell(kernel)
            finally:
                if self._interrupted_at is not None and ctx.language is Language.JAVA and kernel.alive():
                    await _run_silent(kernel, snippets.JAVA_STOP_RUNAWAY)
                if self.env_vars and kernel.alive() and self._interrupted_at is None:
                    await _run_silent(kernel, snippets.restore_env(ctx.language, self.env_vars))
        except KernelDied:
            self._emit(out.error(
                "KernelDied",
                "The kernel died unexpectedly (it is restarted for the next execution; its state is lost).",
                "The kernel process exited during the execution.",
            ))
            # The next execution in this context finds the kernel dead and starts a new one.
            ctx.death_reported = True

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
                    self.ctx.death_reported = True
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
                self._emit_stream(content.get("name", "stdout"), content.get("text", ""))
            elif mtype in ("execute_result", "display_data", "error"):
                saw_error = saw_error or mtype == "error"
                self._emit_output(mtype, content)
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
        if self.ctx.language in DENO_LANGUAGES and kernel.alive():
            await self._fence(kernel, msg_id)

    def _emit_stream(self, name: str, text: str) -> None:
        self._emit(out.stderr(text) if name == "stderr" else out.stdout(text))

    def _emit_output(self, mtype: str, content: dict) -> None:
        if mtype == "error":
            self._emit(out.error(content.get("ename", "Error"), content.get("evalue", ""),
                                 "\n".join(content.get("traceback", []))))
        else:
            self._emit(out.result(content.get("data", {}), is_main_result=mtype == "execute_result"))

    async def _fence(self, kernel: Kernel, msg_id: str) -> None:
        """Deno forwards the cell's stdout and stderr to iopub from a task of its own and only
        gives it a few milliseconds after the cell, and publishes results asynchronously too:
        under load they come after the idle status, possibly tagged with the next request. A
        silent cell that prints a marker to both streams fences them: pipes keep order, so once
        both markers are back, everything the cell printed is too."""
        client = kernel.client
        assert client is not None
        marker = f"\u2063cube-fence-{secrets.token_hex(8)}"
        fence_id = client.execute(f"console.log({json.dumps(marker)}); console.error({json.dumps(marker)}); undefined;",
                                  silent=True, store_history=False, allow_stdin=False)
        pending = {"stdout", "stderr"}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FENCE_TIMEOUT_S
        while pending and loop.time() < deadline:
            try:
                msg = await client.get_iopub_msg(timeout=POLL_S)
            except Empty:
                if not kernel.alive():
                    return
                continue
            parent = msg.get("parent_header", {}).get("msg_id")
            if parent not in (msg_id, fence_id):
                continue
            if msg["msg_type"] in ("execute_result", "display_data", "error"):
                # Published late, like the streams (the fence itself has no result and no error).
                self._emit_output(msg["msg_type"], msg["content"])
                continue
            if msg["msg_type"] != "stream":
                continue
            name, text = msg["content"].get("name", "stdout"), msg["content"].get("text", "")
            if marker in text:
                pending.discard(name)
                text = text.replace(marker + "\n", "").replace(marker, "")
            if text:
                self._emit_stream(name, text)


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

async def prime_context(registry: ContextRegistry, ctx: Context, warm: bool) -> None:
    kernel = ctx.kernel
    if kernel is None or not kernel.alive():
        return  # not started (or dead): it catches up when its first cell starts it
    code = snippets.WARM_CODE.get(ctx.language) if warm else None
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
    contexts = [c for c in registry.list() if (c.is_default or not warm) and not c.in_reserve]
    if not warm:
        # After an /init only Python's catch-up is free (its hook applies the identity itself);
        # another kernel's is a silent cell, which would share the vCPU with the create's first
        # cell (JavaScript's reseed took ~100 ms of it under TCG): those catch up before their
        # own next cell instead.
        contexts = [c for c in contexts if c.language is Language.PYTHON]
    results = await asyncio.gather(*(prime_context(registry, c, warm) for c in contexts), return_exceptions=True)
    for ctx, r in zip(contexts, results, strict=True):
        if isinstance(r, Exception):
            log.warning("priming a context failed", extra={"context": ctx.id, "error": repr(r)})
