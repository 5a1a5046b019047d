"""A matplotlib figure of every chart type E2B documents (bar, line, scatter, pie, box-and-whisker,
superchart), and what the unmodified SDK's `Result.chart` must say of each; and a DataFrame with
the `Result.data` it must give. Shared by the interpreter tests on this host (tests/envd) and on
a node (tests/e2e), so both hold the kernels to the same expectations.

Each case's code draws one figure and shows it, so the cases can also run as one cell whose
results come in the cases' order.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from e2b_code_interpreter.charts import (
    BarChart,
    BoxAndWhiskerChart,
    ChartType,
    LineChart,
    PieChart,
    ScaleType,
    ScatterChart,
    SuperChart,
)


@dataclass(frozen=True)
class ChartCase:
    name: str
    code: str
    check: Callable[[Any], None]  # raises AssertionError if the chart is not what the figure shows


def _bar(chart: Any) -> None:
    assert isinstance(chart, BarChart) and chart.type == ChartType.BAR, chart
    assert (chart.title, chart.x_label, chart.y_label) == ("Sales by region", "Region", "Revenue (kUSD)")
    assert (chart.x_unit, chart.y_unit) == (None, "kUSD")
    assert [(b.label, b.group, b.value) for b in chart.elements] == [
        ("north", "2024", 12), ("south", "2024", 30), ("east", "2024", 7)]


def _line(chart: Any) -> None:
    assert isinstance(chart, LineChart) and chart.type == ChartType.LINE, chart
    assert (chart.title, chart.x_label, chart.y_label, chart.y_unit) == ("Growth", "Day", "Size (m)", "m")
    assert (chart.x_scale, chart.y_scale) == (ScaleType.DATETIME, ScaleType.LINEAR)
    assert [line.label for line in chart.elements] == ["squares", "linear"]
    squares = chart.elements[0].points
    assert len(squares) == 10 and [y for _, y in squares] == [i * i for i in range(10)]
    assert datetime.date.fromisoformat(squares[3][0][:10]) == datetime.date(2024, 3, 4)


def _scatter(chart: Any) -> None:
    assert isinstance(chart, ScatterChart) and chart.type == ChartType.SCATTER, chart
    assert (chart.title, chart.x_label, chart.y_label) == ("Spread", "x", "y")
    assert (chart.x_scale, chart.y_scale) == (ScaleType.LINEAR, ScaleType.LINEAR)
    [samples] = chart.elements
    assert samples.label == "samples" and samples.points == [(1, 4), (2, 1), (3, 3), (4, 2)]


def _pie(chart: Any) -> None:
    assert isinstance(chart, PieChart) and chart.type == ChartType.PIE, chart
    assert chart.title == "Votes"
    assert [(w.label, w.angle, w.radius) for w in chart.elements] == [("yes", 270, 1), ("no", 90, 1)]


def _box(chart: Any) -> None:
    assert isinstance(chart, BoxAndWhiskerChart) and chart.type == ChartType.BOX_AND_WHISKER, chart
    assert (chart.title, chart.x_label, chart.y_label) == ("Spread per group", "Group", "Value")
    got = [(b.label, b.min, b.first_quartile, b.median, b.third_quartile, b.max, b.outliers)
           for b in chart.elements]
    assert got == [("calm", 2, 3, 4, 5, 6, []), ("wild", 1, 4.5, 6, 8, 9, [40])], got


def _superchart(chart: Any) -> None:
    assert isinstance(chart, SuperChart) and chart.type == ChartType.SUPERCHART, chart
    assert chart.title == "Both at once"
    left, right = chart.elements
    assert isinstance(left, LineChart) and left.title == "Left line"
    assert left.elements[0].points == [(0, 2), (1, 0), (2, 1)]
    assert isinstance(right, ScatterChart) and right.title == "Right dots"
    assert right.elements[0].points == [(1, 3), (2, 4)]


_PLT = "import matplotlib.pyplot as plt\n"

CASES = (
    ChartCase("bar", _PLT + (
        "plt.bar(['north', 'south', 'east'], [12, 30, 7], label='2024')\n"
        "plt.title('Sales by region'); plt.xlabel('Region'); plt.ylabel('Revenue (kUSD)')\n"
        "plt.show()\n"), _bar),
    ChartCase("line", _PLT + (
        "import datetime\n"
        "days = [datetime.date(2024, 3, 1) + datetime.timedelta(days=i) for i in range(10)]\n"
        "plt.plot(days, [i * i for i in range(10)], label='squares')\n"
        "plt.plot(days, list(range(10)), label='linear')\n"
        "plt.title('Growth'); plt.xlabel('Day'); plt.ylabel('Size (m)')\n"
        "plt.show()\n"), _line),
    ChartCase("scatter", _PLT + (
        "plt.scatter([1, 2, 3, 4], [4, 1, 3, 2], label='samples')\n"
        "plt.title('Spread'); plt.xlabel('x'); plt.ylabel('y')\n"
        "plt.show()\n"), _scatter),
    ChartCase("pie", _PLT + (
        "plt.pie([3, 1], labels=['yes', 'no'])\n"
        "plt.title('Votes')\n"
        "plt.show()\n"), _pie),
    # patch_artist: boxes drawn as patches, which is how e2b_charts tells a box plot from lines.
    ChartCase("box_and_whisker", _PLT + (
        "plt.boxplot([[2, 3, 4, 5, 6], [1, 4, 5, 6, 7, 9, 40]], tick_labels=['calm', 'wild'], patch_artist=True)\n"
        "plt.title('Spread per group'); plt.xlabel('Group'); plt.ylabel('Value')\n"
        "plt.show()\n"), _box),
    ChartCase("superchart", _PLT + (
        "fig, (left, right) = plt.subplots(1, 2)\n"
        "fig.suptitle('Both at once')\n"
        "left.plot([0, 1, 2], [2, 0, 1]); left.set_title('Left line')\n"
        "right.scatter([1, 2], [3, 4]); right.set_title('Right dots')\n"
        "plt.show()\n"), _superchart),
)

ALL_CHARTS_CODE = "".join(case.code for case in CASES)

# The last expression is the frame: its main result carries `data` beside `text` and `html`.
DATAFRAME_CODE = ("import pandas as pd\n"
                  "pd.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [4.5, 19.0], 'rank': [2, 1],\n"
                  "              'seen': pd.to_datetime(['2024-01-02', '2024-05-06'])})\n")
DATAFRAME_DATA = {"city": ["Oslo", "Lima"], "temp": [4.5, 19.0], "rank": [2, 1],
                  "seen": ["2024-01-02T00:00:00", "2024-05-06T00:00:00"]}
