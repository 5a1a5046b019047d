"""The code interpreter as E2B users know it, on a node, through the unmodified Python SDK
(`e2b_code_interpreter` 2.11.5): chart data of every chart type and a DataFrame's data from the
default template's kernels, and a `run_code` in flight when its sandbox is killed.

The first test needs the default template built with e2b-charts and the agent that installs the
`e2b/chart` and `e2b/data` formats (services/envd/interpreter/e2b_formats.py): a node started from
this tree, whose template was rebuilt when requirements.lock changed.
"""
from __future__ import annotations

import threading
import time

from e2b import TimeoutException

from tests.envd.chart_cases import ALL_CHARTS_CODE, CASES, DATAFRAME_CODE, DATAFRAME_DATA

# The stream ends ~1 s after the kill call on a node (the proxy severs Envoy's connection to the
# gone guest); the bound only has to tell that from the execution's own timeout.
KILL_BOUND_S = 30.0


def test_chart_of_every_type_and_dataframe_data(sandboxes):
    """One sandbox, one cell showing a figure of each chart type E2B documents (bar, line,
    scatter, pie, box-and-whisker, superchart): each result carries the PNG and the chart the
    figure shows. Then a DataFrame as the last expression gives `data` beside `text`/`html`."""
    sbx = sandboxes.create({"case": "charts"})
    ex = sbx.run_code(ALL_CHARTS_CODE, timeout=300)
    assert ex.error is None, ex.error
    assert ex.logs.stderr == []
    assert len(ex.results) == len(CASES), [r.formats() for r in ex.results]
    for case, result in zip(CASES, ex.results, strict=True):
        assert result.png and not result.is_main_result and not result.extra, (case.name, result.formats())
        case.check(result.chart)

    ex = sbx.run_code(DATAFRAME_CODE)
    assert ex.error is None, ex.error
    [result] = ex.results
    assert result.is_main_result and "<table" in result.html and "Oslo" in result.text
    assert result.data == DATAFRAME_DATA


def test_run_code_in_flight_when_its_sandbox_is_killed(sandboxes):
    """A cell running when its sandbox is killed ends within seconds with the SDK's own
    TimeoutException ("The sandbox was killed while the request was in progress"), not at the
    execution's timeout: the proxy severs the stream, the SDK probes /health and meets the 502
    of a sandbox that is gone."""
    sbx = sandboxes.create({"case": "kill-mid-run-code"})
    started = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = sbx.run_code("import time\nprint('started', flush=True)\ntime.sleep(600)",
                                             timeout=900, on_stdout=lambda _: started.set())
        except Exception as e:  # noqa: BLE001 - inspected below
            outcome["error"] = e

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert started.wait(120), outcome
    t0 = time.monotonic()
    assert sbx.kill() is True
    worker.join(KILL_BOUND_S)
    assert not worker.is_alive(), "run_code outlived its sandbox"
    err = outcome.get("error")
    assert isinstance(err, TimeoutException), outcome
    assert "sandbox was killed while the request was in progress" in str(err), err
    print(f"run_code ended {time.monotonic() - t0:.2f}s after the kill call")
    assert not sbx.is_running()
