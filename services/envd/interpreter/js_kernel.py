"""A Jupyter kernel for JavaScript: ipykernel's `Kernel` base class driving one persistent `node`
process, the way bash_kernel drives bash.

Self-contained on purpose (standard library + ipykernel only): the agent copies this file into
the template root and runs it with the template's kernel python, so it needs no installation.

The node side evaluates each cell with `vm.runInThisContext`, so globals and top-level
declarations persist across cells and the completion value of the cell is its result. Output
goes through node's own stdout/stderr pipes; completion, results and errors come back as JSON
lines on a separate control pipe. Node writes to pipes synchronously, so once the completion
line arrives everything the cell printed is already in the pipes and is drained before replying.
"""

from __future__ import annotations

import codecs
import json
import os
import select
import shutil
import signal
import subprocess
import time

from ipykernel.kernelbase import Kernel

DRIVER = r"""
"use strict";
const vm = require("vm");
const util = require("util");
const fs = require("fs");
const path = require("path");
const Module = require("module");
const CTRL = Number(process.env.CUBE_JS_CTRL_FD);
delete process.env.CUBE_JS_CTRL_FD;

globalThis.require = Module.createRequire(path.join(process.cwd(), "[cell]"));
globalThis.module = { exports: {} };
globalThis.exports = globalThis.module.exports;
globalThis.__dirname = process.cwd();
globalThis.__filename = path.join(process.cwd(), "[cell]");
// An interrupt arrives as SIGINT; while no cell runs it must not end the REPL.
process.on("SIGINT", () => {});

function send(obj) { fs.writeSync(CTRL, JSON.stringify(obj) + "\n"); }

function describeError(e) {
  if (e instanceof Error || (e && typeof e === "object" && "stack" in e)) {
    // The driver's own frames (and node's vm plumbing) say nothing about the user's cell.
    const lines = String(e.stack || e).split("\n")
      .filter((l) => !/\((node:|\[eval\])|at node:|at \[eval\]|sigintHandlersWrap/.test(l));
    return { ename: e.name || "Error", evalue: String(e.message ?? ""), traceback: lines };
  }
  return { ename: "Error", evalue: util.inspect(e), traceback: ["Uncaught " + util.inspect(e)] };
}

async function run(code) {
  let value;
  let script;
  try {
    script = new vm.Script(code, { filename: "[cell]" });
  } catch (e) {
    if (e instanceof SyntaxError && /\bawait\b/.test(code)) {
      // Top-level await: run the cell as an async function body.
      script = new vm.Script("(async () => {\n" + code + "\n})()", { filename: "[cell]" });
    } else {
      throw e;
    }
  }
  value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  if (value && typeof value.then === "function") value = await value;
  return value;
}

let buffer = "";
let chain = Promise.resolve();
process.stdin.setEncoding("utf8");
process.stdin.on("data", (d) => {
  buffer += d;
  let i;
  while ((i = buffer.indexOf("\n")) >= 0) {
    const line = buffer.slice(0, i);
    buffer = buffer.slice(i + 1);
    const req = JSON.parse(line);
    chain = chain.then(async () => {
      try {
        const value = await run(req.code);
        const out = { status: "ok" };
        if (value !== undefined) out.result = util.inspect(value, { depth: 4, colors: false });
        send(out);
      } catch (e) {
        send({ status: "error", ...describeError(e) });
      }
    });
  }
});
process.stdin.on("end", () => process.exit(0));
process.on("uncaughtException", (e) => {
  process.stderr.write("Uncaught " + (e && e.stack ? e.stack : String(e)) + "\n");
});
process.on("unhandledRejection", (e) => {
  process.stderr.write("Unhandled rejection: " + (e && e.stack ? e.stack : String(e)) + "\n");
});
"""

# After SIGINT, a cell that does not stop within this long costs the REPL (and its state).
INTERRUPT_GRACE_S = 3.0


class NodeDied(Exception):
    pass


class JavaScriptKernel(Kernel):
    implementation = "cube-javascript"
    implementation_version = "1.0"
    language = "javascript"
    language_info = {  # noqa: RUF012 - ipykernel's Kernel declares it a plain dict attribute
        "name": "javascript",
        "mimetype": "application/javascript",
        "file_extension": ".js",
    }
    banner = "JavaScript (node) kernel"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._node: subprocess.Popen[bytes] | None = None
        self._ctrl: int | None = None
        self._ctrl_buf = b""
        try:
            self._start_node()
        except OSError:
            pass  # reported on the first execution

    @property
    def language_version(self):
        return "node"

    # -- node process -------------------------------------------------------------------------

    def _start_node(self) -> None:
        node = os.environ.get("CUBE_JS_NODE") or shutil.which("node") or shutil.which("nodejs")
        if not node:
            raise FileNotFoundError("node was not found on PATH")
        r, w = os.pipe()
        env = dict(os.environ, CUBE_JS_CTRL_FD=str(w), NODE_NO_WARNINGS="1")
        try:
            self._node = subprocess.Popen(
                [node, "--stack-size=4000", "-e", DRIVER],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(w,), env=env,
            )
        finally:
            os.close(w)
        self._ctrl = r
        self._ctrl_buf = b""
        for f in (self._node.stdout, self._node.stderr):
            assert f is not None  # opened with PIPE
            os.set_blocking(f.fileno(), False)

    def _stop_node(self) -> None:
        if self._node is not None:
            try:
                self._node.kill()
                self._node.wait(timeout=5)
            except Exception:
                pass
            for f in (self._node.stdin, self._node.stdout, self._node.stderr):
                try:
                    if f is not None:
                        f.close()
                except Exception:
                    pass
        if self._ctrl is not None:
            os.close(self._ctrl)
        self._node = None
        self._ctrl = None

    def _ensure_node(self) -> None:
        if self._node is None or self._node.poll() is not None:
            self._stop_node()
            self._start_node()

    # -- execution ----------------------------------------------------------------------------

    def _stream(self, name: str, data: bytes, decoder, silent: bool) -> None:
        text = decoder.decode(data)
        if text and not silent:
            self.send_response(self.iopub_socket, "stream", {"name": name, "text": text})

    def _drain(self, decoders, silent: bool) -> None:
        assert self._node is not None
        for name, f in (("stdout", self._node.stdout), ("stderr", self._node.stderr)):
            assert f is not None  # opened with PIPE
            while True:
                try:
                    data = os.read(f.fileno(), 65536)
                except BlockingIOError:
                    break
                if not data:
                    break
                self._stream(name, data, decoders[name], silent)

    def _wait_reply(self, silent: bool) -> dict:
        assert self._node is not None and self._ctrl is not None
        assert self._node.stdout is not None and self._node.stderr is not None  # opened with PIPE
        decoders = {n: codecs.getincrementaldecoder("utf-8")("replace") for n in ("stdout", "stderr")}
        out_fd, err_fd = self._node.stdout.fileno(), self._node.stderr.fileno()
        interrupted_at: float | None = None
        while True:
            try:
                ready, _, _ = select.select([self._ctrl, out_fd, err_fd], [], [], 0.5)
            except KeyboardInterrupt:
                # The kernel was interrupted: pass it on to the running cell.
                interrupted_at = time.monotonic()
                try:
                    self._node.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
                continue
            if interrupted_at is not None and time.monotonic() - interrupted_at > INTERRUPT_GRACE_S:
                self._stop_node()
                return {"status": "error", "ename": "KeyboardInterrupt",
                        "evalue": "interrupted; the JavaScript REPL was restarted and its state lost",
                        "traceback": ["KeyboardInterrupt"]}
            for fd in ready:
                if fd == self._ctrl:
                    data = os.read(self._ctrl, 65536)
                    if not data:
                        self._drain(decoders, silent)
                        raise NodeDied(f"node exited with status {self._node.wait()}")
                    self._ctrl_buf += data
                    if b"\n" in self._ctrl_buf:
                        line, self._ctrl_buf = self._ctrl_buf.split(b"\n", 1)
                        self._drain(decoders, silent)
                        return json.loads(line)
                else:
                    name = "stdout" if fd == out_fd else "stderr"
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        continue
                    if data:
                        self._stream(name, data, decoders[name], silent)

    def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False,
                   *, cell_meta=None, cell_id=None):
        try:
            self._ensure_node()
            assert self._node is not None and self._node.stdin is not None
            self._node.stdin.write(json.dumps({"code": code}).encode() + b"\n")
            self._node.stdin.flush()
            reply = self._wait_reply(silent)
        except (OSError, NodeDied) as e:
            self._stop_node()
            reply = {"status": "error", "ename": type(e).__name__, "evalue": str(e),
                     "traceback": [f"{type(e).__name__}: {e}"]}
        if reply.get("status") == "ok":
            if "result" in reply and not silent:
                self.send_response(self.iopub_socket, "execute_result", {
                    "execution_count": self.execution_count,
                    "data": {"text/plain": reply["result"]},
                    "metadata": {},
                })
            return {"status": "ok", "execution_count": self.execution_count,
                    "payload": [], "user_expressions": {}}
        content = {"ename": reply.get("ename", "Error"), "evalue": reply.get("evalue", ""),
                   "traceback": reply.get("traceback", [])}
        if not silent:
            self.send_response(self.iopub_socket, "error", content)
        return {"status": "error", "execution_count": self.execution_count, **content}

    def do_shutdown(self, restart):
        self._stop_node()
        return {"status": "ok", "restart": restart}


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=JavaScriptKernel)
