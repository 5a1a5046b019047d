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
import shlex
from queue import Empty

from . import messages as out
from .contexts import Context, ContextRegistry
from .kernels import Kernel, KernelStartError, Language

log = logging.getLogger("envd.execute")

POLL_S = 0.5
# After an interrupt, a kernel that does not get back to idle within this long is restarted.
INTERRUPT_GRACE_S = 5.0
SILENT_TIMEOUT_S = 30.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
            code += f"globalThis.__cubeSavedEnv = Object.fromEntries({json.dumps(list(env))}.map(k => [k, process.env[k]]));\n"
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
        except Empty:
            if not kernel.alive():
                raise KernelDied()
            continue
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            return
    log.warning("silent execution timed out", extra={"kernel": kernel.id})


class Execution:
    def __init__(self, registry: ContextRegistry, ctx: Context, code: str,
                 env_vars: dict[str, str] | None) -> None:
        self.registry = registry
        self.ctx = ctx
        self.code = code
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
            identity = self.registry.identity
            if ctx.env_generation != identity.generation:
                # /init came after this kernel started: give it the sandbox env vars now.
                if identity.env_vars:
                    await _run_silent(kernel, _set_env_code(ctx.language, valid_env(identity.env_vars), save=False))
                ctx.env_generation = identity.generation
            if self.env_vars:
                await _run_silent(kernel, _set_env_code(ctx.language, self.env_vars, save=True))
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
        msg_id = client.execute(self.code, silent=False, store_history=True, allow_stdin=False,
                                stop_on_error=True)
        saw_error = False
        while True:
            try:
                msg = await client.get_iopub_msg(timeout=POLL_S)
            except Empty:
                if not kernel.alive():
                    raise KernelDied()
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
