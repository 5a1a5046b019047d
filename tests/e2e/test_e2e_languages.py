"""Every language of E2B's code interpreter in the default template, through the unmodified
Python SDK (`e2b_code_interpreter`): python, javascript and typescript (Deno's kernel), r
(IRkernel), java (JJava) and bash. Hello world, the sandbox's and a call's env vars, state across
cells and errors in each; ES modules and top-level await in JavaScript; and two sandboxes cloned
from one snapshot draw different random numbers in every language.

What the SDK's own tests expect is the spec here (E2B's `e2b-dev/code-interpreter` test suite:
R's values print as `[1] "..."`, Java's env vars are system properties, a JavaScript string result
is its text).

Under TCG the first cell in TypeScript, R or Java in a sandbox includes that kernel's catch-up
with the sandbox (their kernels wait in reserve, stopped, until first used), hence the timeouts.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest

FIRST_CELL_TIMEOUT_S = 300

@dataclass(frozen=True)
class Case:
    hello: str
    hello_out: list[str]
    env: str                  # reads the sandbox's env var CUBE_E2E_LANG
    env_text: str | None      # what that shows (None: "from-create")
    call_env: str             # reads CUBE_E2E_CALL, with "default" when unset
    set_state: str
    get_state: str
    state_text: str | None    # None: "42"
    error: str
    error_name: str | None    # None: not checked (JJava's and bash's names are their own)


LANGUAGES = {
    "python": Case(
        hello='print("Hello, World!")', hello_out=["Hello, World!\n"],
        env='import os; os.environ["CUBE_E2E_LANG"]', env_text="from-create",
        call_env='os.environ.get("CUBE_E2E_CALL", "default")',
        set_state="kept = 41", get_state="kept + 1", state_text="42",
        error='raise ValueError("boom")', error_name="ValueError"),
    "js": Case(
        hello='console.log("Hello, World!")', hello_out=["Hello, World!\n"],
        env="process.env.CUBE_E2E_LANG", env_text="from-create",
        call_env='process.env.CUBE_E2E_CALL ?? "default"',
        set_state="let kept = 41", get_state="kept + 1", state_text="42",
        error='throw new RangeError("boom")', error_name="RangeError"),
    "ts": Case(
        hello='const greeting: string = "Hello, World!"; console.log(greeting)', hello_out=["Hello, World!\n"],
        env='Deno.env.get("CUBE_E2E_LANG")', env_text="from-create",
        call_env='Deno.env.get("CUBE_E2E_CALL") ?? "default"',
        set_state="let kept: number = 41", get_state="kept + 1", state_text="42",
        error='throw new RangeError("boom")', error_name="RangeError"),
    "r": Case(
        hello='print("Hello, World!")', hello_out=['[1] "Hello, World!"\n'],
        env='Sys.getenv("CUBE_E2E_LANG")', env_text='[1] "from-create"',
        call_env='Sys.getenv("CUBE_E2E_CALL", unset = "default")',
        set_state="kept <- 41", get_state="kept + 1", state_text="[1] 42",
        error='stop("boom")', error_name="ERROR"),
    "java": Case(
        hello='System.out.println("Hello, World!")', hello_out=["Hello, World!\n"],
        env='System.getProperty("CUBE_E2E_LANG")', env_text="from-create",
        call_env='System.getProperty("CUBE_E2E_CALL", "default")',
        set_state="int kept = 41;", get_state="kept + 1", state_text="42",
        error='throw new IllegalStateException("boom")', error_name=None),
    "bash": Case(
        hello='echo "Hello, World!"', hello_out=["Hello, World!\n"],
        env="echo $CUBE_E2E_LANG", env_text=None,
        call_env='echo "${CUBE_E2E_CALL:-default}"',
        set_state="kept=41", get_state="echo $((kept + 1))", state_text=None,
        error="exit_with_no_such_command_here", error_name=None),
}


def _text(ex) -> str | None:
    """The value a cell shows: its main result, else (R shows values as display data) its only
    result, else what it printed (bash)."""
    if ex.text is not None:
        return ex.text.strip()
    if len(ex.results) == 1 and ex.results[0].text is not None:
        return ex.results[0].text.strip()
    return "".join(ex.logs.stdout).strip() or None


@pytest.fixture(scope="module")
def lang_sandbox():
    from tests.e2e.conftest import Sandboxes

    s = Sandboxes()
    try:
        yield s.create({"case": "languages"}, envs={"CUBE_E2E_LANG": "from-create"})
    finally:
        s.kill_all()


KERNEL_PATTERNS = {"ts": "deno jupyter", "r": "IRkernel::main", "java": "jjava.jar", "bash": "bash_kernel"}


def test_default_template_has_every_kernel_running_and_the_unused_ones_stopped(sandboxes):
    """The default template's snapshot has a kernel per language, so no first cell pays a kernel
    start; the ones nobody used yet (TypeScript, R, Java, bash) are stopped, costing no CPU, until
    their first cell, after which they run."""
    sbx = sandboxes.create({"case": "reserve-kernels"})
    ps = sbx.commands.run("ps -eo stat=,args=").stdout.splitlines()

    def states(pattern: str) -> list[str]:
        return [line.split(None, 1)[0] for line in ps if pattern in line and "ps -eo" not in line]

    assert len(states("ipykernel_launcher")) == 1 and not states("ipykernel_launcher")[0].startswith("T")
    deno = states("deno jupyter")  # javascript's (running) and typescript's (in reserve)
    assert len(deno) == 2 and sum(st.startswith("T") for st in deno) == 1, ps
    for language in ("r", "java", "bash"):
        found = states(KERNEL_PATTERNS[language])
        assert len(found) == 1 and found[0].startswith("T"), (language, ps)
    assert sbx.run_code("1 + 1", language="r", timeout=FIRST_CELL_TIMEOUT_S).results[0].text == "[1] 2"
    ps = sbx.commands.run("ps -eo stat=,args=").stdout.splitlines()
    [r_state] = states(KERNEL_PATTERNS["r"])
    assert not r_state.startswith("T"), ps  # used: running for good
    assert states(KERNEL_PATTERNS["java"])[0].startswith("T")  # still in reserve


@pytest.mark.parametrize("language", list(LANGUAGES))
def test_language_hello_env_state_error(lang_sandbox, language):
    c = LANGUAGES[language]
    sbx = lang_sandbox
    ex = sbx.run_code(c.hello, language=language, timeout=FIRST_CELL_TIMEOUT_S)
    assert ex.error is None, ex.error
    assert ex.logs.stdout == c.hello_out
    assert _text(sbx.run_code(c.env, language=language)) == (c.env_text or "from-create")
    ex = sbx.run_code(c.call_env, language=language, envs={"CUBE_E2E_CALL": "per-call"})
    assert "per-call" in (_text(ex) or "")
    assert "default" in (_text(sbx.run_code(c.call_env, language=language)) or "")  # the call's own, then gone
    assert sbx.run_code(c.set_state, language=language).error is None
    assert _text(sbx.run_code(c.get_state, language=language)) == (c.state_text or "42")
    err = sbx.run_code(c.error, language=language).error
    assert err is not None, f"{language}: no error"
    if c.error_name:
        assert err.name == c.error_name, err
    assert "boom" in err.value + err.traceback or language == "bash", err


def test_javascript_es_modules_and_top_level_await(lang_sandbox):
    sbx = lang_sandbox
    ex = sbx.run_code("import { readFileSync } from 'fs'\nconsole.log(typeof readFileSync)", language="js")
    assert ex.logs.stdout == ["function\n"]
    assert sbx.run_code("await Promise.resolve('Hello World!')", language="js").text == "Hello World!"
    sbx.files.write("/home/user/greet.mjs", "export function greet(n) { console.log(`hi ${n}`); return n * 2 }\n")
    ex = sbx.run_code("import { greet } from '/home/user/greet.mjs'\nawait Promise.resolve(greet(21))",
                      language="js")
    assert ex.logs.stdout == ["hi 21\n"] and ex.text == "42"


RANDOM_CODE = {
    "python": "import random; random.random()",
    "js": "JSON.stringify([Math.random(), crypto.randomUUID()])",
    "ts": "JSON.stringify([Math.random(), crypto.randomUUID()])",
    "r": "runif(1)",
    "java": "Math.random()",
    "bash": "echo $RANDOM $RANDOM",
}


def test_two_clones_draw_different_random_numbers_in_every_language(sandboxes):
    """Sandboxes are clones of one snapshot with the kernels already running, so every kernel's
    generator starts from the same state in each: each language must reseed after the restore."""
    a = sandboxes.create({"case": "rng-a"})
    b = sandboxes.create({"case": "rng-b"})
    for language, code in RANDOM_CODE.items():
        draws = [_text(s.run_code(code, language=language, timeout=FIRST_CELL_TIMEOUT_S)) for s in (a, b)]
        assert all(draws), (language, draws)
        assert draws[0] != draws[1], (language, draws)
