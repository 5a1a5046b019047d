"""Every language E2B's code interpreter serves, through the unmodified SDK: JavaScript and
TypeScript on Deno's kernel (the venv's `deno`), Java on JJava (the venv's jar, with this host's
JDK), R where this host has R (the default template always does: tests/e2e cover it there).

The SDK's own expectations are the spec: E2B's tests assert, for instance, that
`await Promise.resolve('Hello World!')` in JavaScript has the text `Hello World!` and that Java's
env vars are system properties."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time

import httpx
import pytest

from services.envd.identity import Identity
from services.envd.interpreter.contexts import ContextRegistry
from services.envd.interpreter.kernels import KernelLaunch, Language, LanguageUnavailable

from .conftest import INTERPRETER, init, text_after_interrupt


def _host_has_jdk() -> bool:
    java = shutil.which("java")
    if java is None:
        return False
    r = subprocess.run([java, "--list-modules"], capture_output=True, text=True)
    return "jdk.jshell" in r.stdout


HAS_JDK = _host_has_jdk()
HAS_R = shutil.which("R") is not None and subprocess.run(
    ["R", "--slave", "-e", "library(IRkernel)"], capture_output=True).returncode == 0


def new_clone() -> None:
    body = {"entropy": base64.b64encode(os.urandom(64)).decode(), "timestamp": time.time(), "envVars": {}}
    assert init(body).status_code == 204


def test_unused_default_kernels_in_reserve_are_stopped_until_used(sandbox, agent):
    """First in this module: no cell has used the default TypeScript context yet.

    The default TypeScript (and R, Java) kernels run in the snapshot but stay stopped while
    nobody has used them: no idle CPU. A first cell wakes them for good."""
    # The agent starts python's and javascript's at boot; the host's settle before the default
    # template's snapshot starts the others' with an empty cell, which is not a use.
    for language in ("js", "ts"):
        ex = httpx.post(INTERPRETER + "/execute", json={"code": "", "language": language}, timeout=120)
        assert ex.status_code == 200 and "end_of_execution" in ex.text
    assert _default_context("typescript")
    states = {p: _state(p) for p in _kernel_pids("deno jupyter --kernel")}
    assert "T" in states.values(), states  # the reserve TypeScript kernel: stopped
    assert any(s != "T" for s in states.values()), states  # the JavaScript one (default, not reserve): not
    stopped = [p for p, s in states.items() if s == "T"]
    assert sandbox.run_code("const z: number = 3; z * 2", language="ts").text == "6"
    assert all(_state(p) != "T" for p in stopped)


# -- JavaScript and TypeScript (Deno) -----------------------------------------------------------

@pytest.mark.parametrize("language", ["js", "ts"])
def test_deno_hello_state_and_errors(sandbox, language):
    ctx = sandbox.create_code_context(language=language)
    try:
        ex = sandbox.run_code("console.log('Hello, World!')", context=ctx)
        assert ex.logs.stdout == ["Hello, World!\n"] and ex.error is None
        sandbox.run_code("let counter = 41", context=ctx)
        assert sandbox.run_code("counter + 1", context=ctx).text == "42"
        err = sandbox.run_code("throw new TypeError('bad thing')", context=ctx).error
        assert err.name == "TypeError" and err.value == "bad thing" and "bad thing" in err.traceback
        # A result is plain text (no terminal colours); a string is itself, not quoted.
        assert sandbox.run_code("[1, 2].map((x) => x * 2)", context=ctx).text == "[ 2, 4 ]"
        assert sandbox.run_code("'it\\'s \"quoted\"'", context=ctx).text == 'it\'s "quoted"'
    finally:
        sandbox.remove_code_context(ctx)


def test_js_es_modules_and_top_level_await(sandbox):
    # E2B's own SDK tests, verbatim in substance.
    ex = sandbox.run_code("import { readFileSync } from 'fs'\nconsole.log(typeof readFileSync)", language="js")
    assert ex.logs.stdout == ["function\n"]
    assert sandbox.run_code("await Promise.resolve('Hello World!')", language="js").text == "Hello World!"
    # console.log from a function a cell imported from a module file.
    sandbox.files.write("/home/user/greet.mjs", "export function greet(n) { console.log(`hi ${n}`); return n * 2 }\n")
    ex = sandbox.run_code("import { greet } from '/home/user/greet.mjs'\nawait Promise.resolve(greet(21))",
                          language="js")
    assert ex.logs.stdout == ["hi 21\n"] and ex.text == "42"
    # Node's require still works, for code written for a Node kernel.
    assert sandbox.run_code("require('path').join('a', 'b')", language="js").text == "a/b"


def test_ts_types(sandbox):
    ex = sandbox.run_code("const message: string = 'Hello, World!'; console.log(message)", language="ts")
    assert ex.logs.stdout == ["Hello, World!\n"]
    ex = sandbox.run_code("interface P { x: number }\nconst p: P = { x: 3 }\np.x * 2", language="typescript")
    assert ex.text == "6"


def test_deno_output_of_a_busy_cell_is_not_lost(sandbox):
    """Deno forwards stdout from a task of its own: every line a cell prints is in its result,
    even when the cell ends right after printing (the agent fences the streams)."""
    code = "for (let i = 0; i < 200; i++) console.log('line', i); console.error('done'); 7"
    for _ in range(3):
        ex = sandbox.run_code(code, language="js")
        assert "".join(ex.logs.stdout).count("line") == 200
        assert ex.logs.stderr == ["done\n"] and ex.text == "7"


def test_deno_env_vars(sandbox):
    ex = sandbox.run_code("process.env.CUBE_T_FOO", language="js", envs={"CUBE_T_FOO": "bar"})
    assert ex.text == "bar"
    assert sandbox.run_code("process.env.CUBE_T_FOO ?? 'unset'", language="js").text == "unset"
    ex = sandbox.run_code("Deno.env.get('CUBE_T_FOO')", language="ts", envs={"CUBE_T_FOO": "q \"x\" \n y"})
    assert ex.text == 'q "x" \n y'


def test_deno_interrupt_keeps_state(sandbox):
    from e2b.exceptions import TimeoutException

    ctx = sandbox.create_code_context(language="js")
    try:
        sandbox.run_code("globalThis.kept = 5", context=ctx)
        with pytest.raises(TimeoutException):
            sandbox.run_code("while (true) {}", context=ctx, timeout=2)
        assert text_after_interrupt(sandbox, ctx, "kept", "5") == "5"
    finally:
        sandbox.remove_code_context(ctx)


@pytest.mark.parametrize("language", ["js", "ts"])
def test_deno_reseed_after_a_new_clone_is_silent(sandbox, language):
    ctx = sandbox.create_code_context(language=language)
    try:
        ex = sandbox.run_code("let n = 1; n", context=ctx)
        count = ex.execution_count
        new_clone()
        ex = sandbox.run_code("console.log('cell'); n + 1", context=ctx)
        assert ex.text == "2" and ex.execution_count == count + 1 and ex.error is None
        assert ex.logs.stdout == ["cell\n"] and ex.logs.stderr == []
        ex = sandbox.run_code("Object.keys(globalThis).filter((k) => k.toLowerCase().includes('cube'))", context=ctx)
        assert ex.text == "[]"
    finally:
        sandbox.remove_code_context(ctx)


def test_deno_math_random_reseeded_not_replayed():
    """The reseed replaces Math.random's state with the agent's fresh entropy: two kernels that
    start identical (as clones do) diverge. Checked on the snippets themselves, with two Deno
    processes given the same starting state and different reseeds."""
    from services.envd.interpreter import snippets

    deno = os.path.join(os.path.dirname(__file__), "..", "..", ".venv", "bin", "deno")
    prelude = snippets.prelude(Language.JAVASCRIPT)
    fixed = prelude.replace("crypto.getRandomValues(s);", "s.set([1, 2, 3, 4]);")
    assert fixed != prelude
    draw = "\nconsole.log(Math.random(), Math.random());\n"

    def run(extra: str) -> str:
        r = subprocess.run([deno, "eval", fixed + extra + draw], capture_output=True, text=True, env={"NO_COLOR": "1"})
        assert r.returncode == 0, r.stderr
        return r.stdout

    same = [run("") for _ in range(2)]
    assert same[0] == same[1] and same[0].strip()  # the same state gives the same numbers...
    reseeded = [run(snippets.reseed(Language.JAVASCRIPT) or "") for _ in range(2)]
    assert reseeded[0] != reseeded[1] and all(r.strip() for r in reseeded)  # ...a reseed does not


# -- Java (JJava) -------------------------------------------------------------------------------

needs_jdk = pytest.mark.skipif(not HAS_JDK, reason="this host has no JDK with jdk.jshell (tests/e2e run Java "
                                                   "in the default template)")


@needs_jdk
def test_java_hello_state_errors(sandbox):
    ex = sandbox.run_code('System.out.println("Hello, World!")', language="java", timeout=120)
    assert ex.logs.stdout == ["Hello, World!\n"]
    ctx = sandbox.create_code_context(language="java")
    try:
        sandbox.run_code("int x = 41;", context=ctx)
        assert sandbox.run_code("x + 1", context=ctx).text == "42"
        err = sandbox.run_code('throw new IllegalStateException("boom")', context=ctx).error
        # JJava names the exception in the value and traceback (its ename is the thrown type's base).
        assert "boom" in err.value and "IllegalStateException" in err.value + err.traceback
        err = sandbox.run_code('int y = "s";', context=ctx).error
        assert err is not None and "incompatible types" in (err.value + err.traceback)
    finally:
        sandbox.remove_code_context(ctx)


@needs_jdk
def test_java_env_vars_are_system_properties(sandbox):
    ex = sandbox.run_code('System.getProperty("CUBE_T_FOO")', envs={"CUBE_T_FOO": "bar"}, language="java")
    assert ex.text == "bar"
    assert sandbox.run_code('System.getProperty("CUBE_T_FOO", "default")', language="java").text == "default"
    sandbox.run_code('System.setProperty("CUBE_T_KEEP", "mine");', language="java")
    ex = sandbox.run_code('System.getProperty("CUBE_T_KEEP")', envs={"CUBE_T_KEEP": "call"}, language="java")
    assert ex.text == "call"
    assert sandbox.run_code('System.getProperty("CUBE_T_KEEP")', language="java").text == "mine"


@needs_jdk
def test_java_math_random_reseeded(sandbox):
    ctx = sandbox.create_code_context(language="java")
    try:
        # Reach the shared generator the way the reseed does, seed it, and see the reseed move it.
        sandbox.run_code('var f = Class.forName("java.lang.Math$RandomNumberGeneratorHolder")'
                         '.getDeclaredField("randomNumberGenerator"); f.setAccessible(true);', context=ctx)
        seeded = "((java.util.Random) f.get(null)).setSeed(42L); Math.random()"
        first = sandbox.run_code(seeded, context=ctx).text
        assert sandbox.run_code(seeded, context=ctx).text == first
        sandbox.run_code("((java.util.Random) f.get(null)).setSeed(42L);", context=ctx)
        new_clone()
        assert sandbox.run_code("Math.random()", context=ctx).text != first
    finally:
        sandbox.remove_code_context(ctx)


# -- R, and languages a root lacks --------------------------------------------------------------

@pytest.mark.skipif(not HAS_R, reason="this host has no R with IRkernel (tests/e2e run R in the default template)")
def test_r_hello_env_and_errors(sandbox):
    ex = sandbox.run_code('print("Hello, World!")', language="r")
    assert ex.logs.stdout == ['[1] "Hello, World!"\n']
    ex = sandbox.run_code("Sys.getenv('CUBE_T_FOO')", envs={"CUBE_T_FOO": "bar"}, language="r")
    assert ex.results[0].text.strip() == '[1] "bar"'
    ex = sandbox.run_code("Sys.getenv('CUBE_T_FOO', unset = 'default')", language="r")
    assert ex.results[0].text.strip() == '[1] "default"'
    assert "boom" in sandbox.run_code('stop("boom")', language="r").error.value


def test_language_missing_from_the_root_is_refused_clearly(tmp_path):
    launch = KernelLaunch(kernel_python="python3", runtime_dir=str(tmp_path), r=str(tmp_path / "no-R"),
                          java_kernel_jar=str(tmp_path / "no.jar"))
    registry = ContextRegistry(Identity(), launch)
    with pytest.raises(LanguageUnavailable, match=r"'r' is not available .* no .*no-R"):
        registry.check_available(Language.R)
    with pytest.raises(LanguageUnavailable, match=r"no\.jar"):
        registry.check_available(Language.JAVA)
    assert Language.R not in registry.available_languages()


def test_languages_and_aliases_over_http(sandbox, agent):
    for name, language in [("ts", "typescript"), ("TypeScript", "typescript"), ("js", "javascript"),
                           ("java", "java"), ("bash", "bash")]:
        if language == "java" and not HAS_JDK:
            continue
        r = httpx.post(INTERPRETER + "/contexts", json={"language": name}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["language"] == language
        assert httpx.delete(INTERPRETER + f"/contexts/{r.json()['id']}").status_code == 200
    r = httpx.post(INTERPRETER + "/execute", json={"code": "1", "language": "cobol"})
    assert r.status_code == 400 and "unsupported language 'cobol'" in r.text
    if not HAS_R:
        r = httpx.post(INTERPRETER + "/execute", json={"code": "1", "language": "r"})
        assert r.status_code == 400 and "'r' is not available" in r.text
    langs = {c["language"] for c in httpx.get(INTERPRETER + "/contexts").json()}
    assert {"python", "javascript"} <= langs  # started at boot


# -- kernels in reserve -------------------------------------------------------------------------

def _kernel_pids(pattern: str) -> list[int]:
    r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in r.stdout.split()]


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _default_context(language: str) -> dict:
    return next(c for c in httpx.get(INTERPRETER + "/contexts").json() if c["language"] == language)


@needs_jdk
def test_java_interrupt_stops_a_runaway_cell(sandbox):
    from e2b.exceptions import TimeoutException

    ctx = sandbox.create_code_context(language="java")
    try:
        sandbox.run_code("int kept = 7;", context=ctx, timeout=120)
        before = set(_kernel_pids("jjava.jar"))
        with pytest.raises(TimeoutException):
            sandbox.run_code("while (true) {}", context=ctx, timeout=3)
        # The kernel survived the interrupt, with its state.
        assert text_after_interrupt(sandbox, ctx, "kept", "7") == "7"
        pids = set(_kernel_pids("jjava.jar")) & before
        ticks = {p: _cpu_ticks(p) for p in pids}
        time.sleep(2)
        used = max(_cpu_ticks(p) - t for p, t in ticks.items())
        assert used < 100, f"{used} ticks in 2 s: the interrupted loop still runs"  # 100 ticks = 1 s of CPU
    finally:
        sandbox.remove_code_context(ctx)


@pytest.mark.parametrize("language", ["python", "js"])
def test_kernel_that_died_between_cells_is_restarted_and_said_so(sandbox, language):
    ctx = sandbox.create_code_context(language=language)
    try:
        pid_code = "import os; os.getpid()" if language == "python" else "Deno.pid"
        pid = int(sandbox.run_code(pid_code, context=ctx, timeout=120).text)
        os.kill(pid, 9)  # from outside, between cells (an OOM kill, say)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.1)
        ex = sandbox.run_code("1 + 1", context=ctx, timeout=120)
        assert ex.error is not None and ex.error.name == "KernelRestarted"
        assert "restarted" in ex.error.value and "not run" in ex.error.value and ex.text is None
        assert sandbox.run_code("20 + 22", context=ctx, timeout=120).text == "42"  # once only
    finally:
        sandbox.remove_code_context(ctx)
