"""run_code through the unmodified e2b-code-interpreter SDK, backed by real Jupyter kernels."""

from __future__ import annotations

import base64

import httpx
import pytest
from e2b import NotFoundException, TimeoutException

from .conftest import INTERPRETER, text_after_interrupt


def test_print_result_and_execution_count(sandbox):
    ex = sandbox.run_code("print('hello')\n1 + 1")
    assert ex.logs.stdout == ["hello\n"]
    assert ex.text == "2"
    assert ex.error is None
    assert ex.execution_count and ex.execution_count >= 1
    assert sandbox.run_code("'a string'").text == "a string"


def test_warmup_leaves_no_trace(sandbox):
    """The warm pool's throwaway cell (POST /warmup) must not show in the user's kernel: no
    execution count, no output history (`_`), no output in the next cell."""
    first = sandbox.run_code("6 * 7")
    assert first.text == "42"
    r = httpx.post(f"{INTERPRETER}/warmup", timeout=120)
    assert r.status_code == 204, r.text
    after = sandbox.run_code("_")
    assert after.text == "42"
    assert after.execution_count == first.execution_count + 1
    assert after.logs.stdout == [] and after.logs.stderr == []


def test_session_history_works_without_the_history_database(sandbox):
    """The kernel runs with IPython's history database off; the session's In/Out/_i still work."""
    ctx = sandbox.create_code_context()
    try:
        sandbox.run_code("a = 40 + 2\na", context=ctx)
        ex = sandbox.run_code("(In[1], Out[1], _i1)", context=ctx)
        assert ex.error is None and ex.text == "('a = 40 + 2\\na', 42, 'a = 40 + 2\\na')", ex
    finally:
        sandbox.remove_code_context(ctx)


def test_stderr_and_callbacks(sandbox):
    seen = []
    ex = sandbox.run_code("import sys; print('o'); print('e', file=sys.stderr)",
                          on_stdout=lambda m: seen.append(("out", m.line)),
                          on_stderr=lambda m: seen.append(("err", m.line)))
    assert ex.logs.stderr == ["e\n"]
    assert ("out", "o\n") in seen and ("err", "e\n") in seen


def test_error_has_name_value_traceback(sandbox):
    ex = sandbox.run_code("def f():\n    raise ValueError('boom')\nf()")
    assert ex.error.name == "ValueError"
    assert ex.error.value == "boom"
    assert "f()" in ex.error.traceback and "ValueError" in ex.error.traceback
    assert sandbox.run_code("1").text == "1"  # the context still works


def test_state_persists_across_calls(sandbox):
    sandbox.run_code("counter = 10")
    sandbox.run_code("counter += 5")
    assert sandbox.run_code("counter").text == "15"


def test_contexts_are_isolated(sandbox):
    a = sandbox.create_code_context()
    b = sandbox.create_code_context(cwd="/tmp")
    assert b.cwd == "/tmp"
    sandbox.run_code("secret = 'a'", context=a)
    ex = sandbox.run_code("secret", context=b)
    assert ex.error is not None and ex.error.name == "NameError"
    assert sandbox.run_code("import os; os.getcwd()", context=b).text == "/tmp"
    ids = {c.id for c in sandbox.list_code_contexts()}
    assert {a.id, b.id} <= ids
    sandbox.restart_code_context(a)
    assert sandbox.run_code("secret", context=a).error.name == "NameError"
    sandbox.remove_code_context(a)
    sandbox.remove_code_context(b)
    assert not {a.id, b.id} & {c.id for c in sandbox.list_code_contexts()}
    with pytest.raises(NotFoundException):
        sandbox.run_code("1", context=a)
    with pytest.raises(NotFoundException):
        sandbox.remove_code_context(a)


def test_default_contexts_listed(sandbox):
    langs = [c.language for c in sandbox.list_code_contexts()]
    assert "python" in langs and "javascript" in langs


def test_matplotlib_png(sandbox):
    ex = sandbox.run_code("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    assert ex.error is None
    pngs = [r.png for r in ex.results if r.png]
    assert pngs and base64.b64decode(pngs[0]).startswith(b"\x89PNG")


def test_pandas_dataframe(sandbox):
    ex = sandbox.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
    [r] = ex.results
    assert r.is_main_result
    assert "<table" in r.html and "a" in r.text


def test_env_vars_per_execution(sandbox):
    ex = sandbox.run_code("import os; os.environ.get('PER_RUN')", envs={"PER_RUN": "yes"})
    assert ex.text == "yes"
    assert sandbox.run_code("import os; os.environ.get('PER_RUN', 'unset')").text == "unset"


def test_bash(sandbox):
    ex = sandbox.run_code("X=41; echo $((X+1)); whoami", language="bash")
    assert ex.logs.stdout and "42" in "".join(ex.logs.stdout) and "user" in "".join(ex.logs.stdout)
    assert "42" in "".join(sandbox.run_code("echo $((X+1))", language="bash").logs.stdout)


def test_javascript(sandbox):
    ex = sandbox.run_code("const items = [1, 2, 3]; console.log('n', items.length); items.map(x => x * 2)",
                          language="javascript")
    assert ex.logs.stdout == ["n 3\n"]
    assert ex.text == "[ 2, 4, 6 ]"
    assert sandbox.run_code("items.length", language="js").text == "3"
    err = sandbox.run_code("null.x", language="javascript").error
    assert err.name == "TypeError" and "null" in err.value
    ex = sandbox.run_code("await new Promise(r => setTimeout(() => r(5), 10))", language="javascript")
    assert ex.error is None


def test_timeout_interrupts_and_context_survives(sandbox):
    ctx = sandbox.create_code_context()
    sandbox.run_code("x = 1", context=ctx)
    with pytest.raises(TimeoutException):
        sandbox.run_code("import time\nwhile True: time.sleep(0.1)", context=ctx, timeout=2)
    # The kernel was interrupted, not killed: its state is still there.
    assert text_after_interrupt(sandbox, ctx, "x", "1") == "1"
    sandbox.remove_code_context(ctx)


def test_kernel_death_is_reported_and_recovered(sandbox, agent):
    ctx = sandbox.create_code_context()
    ex = sandbox.run_code("import os; print('bye', flush=True); os._exit(1)", context=ctx, timeout=60)
    assert ex.error is not None and ex.error.name == "KernelDied"
    ex = sandbox.run_code("21 * 2", context=ctx, timeout=120)
    assert ex.text == "42"
    assert agent.proc.poll() is None
    sandbox.remove_code_context(ctx)


def test_interpreter_bad_requests(agent):
    r = httpx.post(INTERPRETER + "/execute", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = httpx.post(INTERPRETER + "/execute", json={"code": "1", "context_id": "x", "language": "python"})
    assert r.status_code == 400
    r = httpx.post(INTERPRETER + "/execute", json={"code": "1", "language": "cobol"})
    assert r.status_code == 400
    r = httpx.post(INTERPRETER + "/contexts", json={"language": "cobol"})
    assert r.status_code == 400
    r = httpx.post(INTERPRETER + "/contexts/missing/restart")
    assert r.status_code == 404
    assert httpx.get(INTERPRETER + "/health").json() == "OK"
