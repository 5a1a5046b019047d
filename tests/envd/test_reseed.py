"""Kernels running when /init marks a new clone get fresh RNG state before their next cell,
silently (no output, no execution count), the same lazy way /init env vars reach them."""

from __future__ import annotations

import base64
import os
import time

import pytest

from services.envd.identity import Identity, InitRequest

from .conftest import init

SEED42_RANDOM = 0.6394267984578837  # random.seed(42); random.random()
SEED42_NUMPY = 0.3745401188473625   # numpy.random.seed(42); numpy.random.random()


def new_clone() -> None:
    """What the host sends after every restore (token and env vars aside)."""
    body = {"entropy": base64.b64encode(os.urandom(64)).decode(), "timestamp": time.time(),
            "envVars": {}}
    assert init(body).status_code == 204


@pytest.fixture
def py_context(sandbox):
    ctx = sandbox.create_code_context()
    yield ctx
    sandbox.remove_code_context(ctx)


def test_reseed_python_random_silently(sandbox, py_context):
    ex = sandbox.run_code("import random, sys\nrandom.seed(42)", context=py_context)
    assert ex.error is None
    count = ex.execution_count
    assert sandbox.run_code("random.random()", context=py_context).text == str(SEED42_RANDOM)
    sandbox.run_code("random.seed(42)", context=py_context)
    count += 2

    new_clone()
    ex = sandbox.run_code("print('cell'); random.random()", context=py_context)
    assert ex.error is None
    assert float(ex.text) != SEED42_RANDOM
    # The reseed left no trace: not in the count, the output, the history or the namespace.
    assert ex.execution_count == count + 1
    assert ex.logs.stdout == ["cell\n"] and ex.logs.stderr == []
    assert [r.is_main_result for r in ex.results] == [True]
    ex = sandbox.run_code("[n for n in dir() if 'cube_reseed' in n], len(In) - 1", context=py_context)
    assert ex.execution_count == count + 2 and ex.text == f"([], {count + 2})"
    # Once only: a second cell keeps the state the user now sets.
    sandbox.run_code("random.seed(42)", context=py_context)
    assert sandbox.run_code("random.random()", context=py_context).text == str(SEED42_RANDOM)


def test_init_without_entropy_keeps_user_seed(sandbox, py_context):
    sandbox.run_code("import random\nrandom.seed(42)", context=py_context)
    # Env vars / clock only: not a new clone, a user's seed stays reproducible.
    assert init({"timestamp": time.time(), "envVars": {}}).status_code == 204
    assert sandbox.run_code("random.random()", context=py_context).text == str(SEED42_RANDOM)


def test_default_python_context_is_reseeded(sandbox):
    sandbox.run_code("import random\nrandom.seed(42)")
    new_clone()
    assert float(sandbox.run_code("random.random()").text) != SEED42_RANDOM


def test_numpy_reseeded_only_if_imported(sandbox, py_context):
    other = sandbox.create_code_context()
    try:
        imported = "'numpy.random' in sys.modules, 'numpy' in sys.modules"
        assert sandbox.run_code(f"import sys; {imported}", context=other).text == "(False, False)"
        ex = sandbox.run_code("import numpy as np\nnp.random.seed(42)", context=py_context)
        assert ex.error is None
        new_clone()
        ex = sandbox.run_code("np.random.random()", context=py_context)
        assert ex.error is None and float(ex.text) != SEED42_NUMPY
        # The kernel that never imported numpy still has not.
        assert sandbox.run_code(imported, context=other).text == "(False, False)"
    finally:
        sandbox.remove_code_context(other)


def test_bash_random_reseeded(sandbox):
    ctx = sandbox.create_code_context(language="bash")
    try:
        ex = sandbox.run_code("RANDOM=42; echo $RANDOM $RANDOM $RANDOM", context=ctx)
        seeded = "".join(ex.logs.stdout)
        assert len(seeded.split()) == 3
        ex = sandbox.run_code("RANDOM=42", context=ctx)
        count = ex.execution_count
        new_clone()
        ex = sandbox.run_code("echo $RANDOM $RANDOM $RANDOM", context=ctx)
        assert ex.execution_count == count + 1
        after = "".join(ex.logs.stdout)
        assert len(after.split()) == 3 and after != seeded
        # Still the special variable: a user seed after the reseed is reproducible again.
        again = sandbox.run_code("RANDOM=42; echo $RANDOM $RANDOM $RANDOM", context=ctx)
        assert "".join(again.logs.stdout) == seeded
    finally:
        sandbox.remove_code_context(ctx)


def test_which_init_calls_reseed():
    ident = Identity()
    ident.apply(InitRequest(env_vars={"A": "1"}))
    assert ident.reseed_generation == 0
    ident.apply(InitRequest(access_token="t1"))  # a new token: a new sandbox
    assert ident.reseed_generation == 1
    ident.apply(InitRequest(access_token="t1"))  # the same token again: not
    assert ident.reseed_generation == 1
    ident.apply(InitRequest(entropy=b"x" * 16))  # entropy: the host restored a snapshot
    assert ident.reseed_generation == 2
    ident.apply(InitRequest(access_token=""))  # clearing the token changes it
    assert ident.reseed_generation == 3
    assert ident.generation == 5
