"""E2B's own result formats through the unmodified SDK: `Result.chart` for matplotlib figures
(e2b-charts) and `Result.data` for pandas DataFrames, made by the formatters every Python kernel
gets (services/envd/interpreter/e2b_formats.py). The kernels run this host's venv, which has
what the default template has (requirements.lock)."""

from __future__ import annotations

import base64
import json

import pytest

from .chart_cases import ALL_CHARTS_CODE, CASES, DATAFRAME_CODE, DATAFRAME_DATA


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_chart_of_each_type(sandbox, case):
    ex = sandbox.run_code(case.code)
    assert ex.error is None, ex.error
    assert ex.logs.stderr == []  # the extractor's warnings stay out of the cell
    [result] = ex.results
    assert base64.b64decode(result.png).startswith(b"\x89PNG") and result.text.startswith("<Figure")
    assert not result.is_main_result and not result.extra
    case.check(result.chart)
    assert json.loads(ex.to_json())["results"][0]["chart"]["type"] == result.chart.type.value


def test_one_cell_shows_every_chart_in_order(sandbox):
    ex = sandbox.run_code(ALL_CHARTS_CODE)
    assert ex.error is None, ex.error
    assert len(ex.results) == len(CASES)
    for case, result in zip(CASES, ex.results, strict=True):
        case.check(result.chart)


def test_charts_survive_configuring_the_inline_backend_again(sandbox):
    """`%matplotlib inline` (like set_matplotlib_formats) pops every formatter's Figure printer:
    the chart format does not depend on that registry."""
    ex = sandbox.run_code("%matplotlib inline\n" + CASES[0].code)
    assert ex.error is None, ex.error
    CASES[0].check(ex.results[0].chart)


def test_a_figure_without_data_has_no_chart(sandbox):
    ex = sandbox.run_code("import matplotlib.pyplot as plt\nplt.figure()\nplt.title('empty')\nplt.show()")
    assert ex.error is None and ex.logs.stderr == []
    [result] = ex.results
    assert result.png and result.chart is None and not result.extra


def test_dataframe_gives_data(sandbox):
    ex = sandbox.run_code(DATAFRAME_CODE)
    assert ex.error is None, ex.error
    [result] = ex.results
    assert result.is_main_result and "<table" in result.html and "Oslo" in result.text
    assert result.data == DATAFRAME_DATA
    assert result.chart is None and not result.extra


def test_data_is_strict_json(sandbox):
    """Missing and non-finite values are null, odd column names and values strings; a frame shown
    with display() gives data too."""
    ex = sandbox.run_code(
        "import decimal, math\nimport numpy as np, pandas as pd\n"
        "frame = pd.DataFrame({'f': [1.5, math.nan, math.inf], 't': pd.to_datetime(['2024-02-03', None, None]),\n"
        "                      3: ['a', None, decimal.Decimal('2.50')], 'i': pd.array([1, None, 3], dtype='Int64'),\n"
        "                      'o': [np.int64(7), [np.float32(0.5)], {'k': math.nan}]})\n"
        "display(frame)")
    assert ex.error is None, ex.error
    assert ex.logs.stderr == []
    [result] = ex.results
    assert not result.is_main_result
    assert result.data == {"f": [1.5, None, None], "t": ["2024-02-03T00:00:00", None, None],
                           "3": ["a", None, "2.50"], "i": [1, None, 3], "o": [7, [0.5], {"k": None}]}


def test_other_values_get_neither(sandbox):
    for code in ("1 + 1", "[1, 2]", "import pandas as pd\npd.Series([1, 2])", "'text'"):
        [result] = sandbox.run_code(code).results
        assert result.data is None and result.chart is None and not result.extra, code


def test_objects_can_give_their_own_data(sandbox):
    """As with IPython's _repr_*_ methods (and in E2B's template), an object may make its data."""
    ex = sandbox.run_code("class Table:\n"
                          "    def _repr_e2b_data_(self):\n"
                          "        return {'x': [1, 2]}\n"
                          "Table()")
    assert ex.results[0].data == {"x": [1, 2]}


def test_new_and_restarted_contexts_have_the_formats_and_no_names_of_them(sandbox):
    ctx = sandbox.create_code_context()
    try:
        for _ in range(2):
            ex = sandbox.run_code(CASES[0].code, context=ctx)
            CASES[0].check(ex.results[0].chart)
            assert sandbox.run_code(DATAFRAME_CODE, context=ctx).results[0].data == DATAFRAME_DATA
            leaked = sandbox.run_code("[n for n in dir() if 'cube' in n.lower() or 'e2b' in n.lower()]",
                                      context=ctx)
            assert leaked.text == "[]"
            sandbox.restart_code_context(ctx)
    finally:
        sandbox.remove_code_context(ctx)
