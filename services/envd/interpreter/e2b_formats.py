"""E2B's own result formats, made inside every Python kernel: `e2b/chart` and `e2b/data`.

E2B's code-interpreter template registers two IPython display formatters when a kernel starts.
The SDKs read them as `Result.chart` (what a matplotlib figure shows: its type, title, axes and
elements, as PyPI's `e2b-charts` extractor describes it, so an agent can read a plot without
vision) and `Result.data` (a pandas DataFrame's columns). messages.py maps both MIME types to
those keys; this module makes them.

Two sides, one file:
- Kernel side, ``install(shell)`` and what it calls: runs inside a kernel, on the template's
  Python. The agent never imports IPython, pandas, matplotlib or e2b_charts (its base image has
  none of them), so they are imported inside functions, from the kernel.
- Agent side, ``install_code()``: this file's source wrapped in silent Python that executes it in a
  namespace of its own and installs it, so no name reaches the user's. A kernel's one-time set-up
  sends it (execute.catch_up), before the kernel's first cell and again after a restart. It reads
  the file, so it is called while the agent still sees its own files (before chroot).

Invariants:
- Installing imports nothing: a format applies to instances of a class found in `sys.modules` by
  module and name, so a kernel that never imports pandas or matplotlib never loads them (nor can
  it hold a DataFrame or a Figure), and any other object costs a dictionary lookup per format.
- The formats keep that dispatch of their own rather than IPython's per-type registry: IPython's
  `select_figure_formats`, which the inline backend runs whenever it is configured (pyplot's
  first import, `%matplotlib inline`, `set_matplotlib_formats`), pops the Figure printer of every
  formatter. Objects may still give a format themselves (`_repr_e2b_chart_`, `_repr_e2b_data_`).
- A format that cannot be made is left out, never raised: IPython would print the formatter's
  traceback into the user's cell, and a figure's PNG must come through whatever the extractor
  thinks of it. A template without `e2b_charts` gives figures without a chart.
- `e2b/chart` is e2b_charts' dict for the figure, made strict JSON as `e2b/data` is. A figure with
  no data gives no chart (E2B's template sends `{}` then, which the Python SDK reads as no chart).
- `e2b/data` is E2B's shape, ``{column: [value, ...]}`` in column order
  (``DataFrame.to_dict(orient="list")``) with timestamps as ISO 8601 strings, but always strict
  JSON: missing and non-finite values (NaN, NaT, NA, inf) are null, and column names and values
  that JSON cannot hold are strings. (E2B's leaves those to the kernel's message packer, which
  sends NaN as the string "nan" and prints a serialization warning into the cell's stderr.)
"""

from __future__ import annotations

import datetime
import importlib
import math
import sys
import warnings
from typing import Any

CHART_MIME = "e2b/chart"
DATA_MIME = "e2b/data"
# Methods an object may define to give these formats itself, as IPython's _repr_*_ methods do
# (the same names as in E2B's template).
CHART_METHOD = "_repr_e2b_chart_"
DATA_METHOD = "_repr_e2b_data_"
# (module, class name) of what each format applies to, subclasses included.
FIGURE_CLASS = ("matplotlib.figure", "Figure")
DATAFRAME_CLASS = ("pandas.core.frame", "DataFrame")


# -- agent side ----------------------------------------------------------------------------------

def install_code() -> str:
    """Silent Python that installs the formats in the kernel it runs in and leaves no name behind."""
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    return ("def __cube_install_e2b_formats():\n"
            "    namespace = {'__name__': 'cube_e2b_formats'}\n"
            f"    exec(compile({source!r}, 'cube_e2b_formats', 'exec'), namespace)\n"
            "    namespace['install'](get_ipython())\n"
            "__cube_install_e2b_formats()\n"
            "del __cube_install_e2b_formats\n")


# -- kernel side ---------------------------------------------------------------------------------

def install(shell: Any) -> None:
    """Registers both formats with ``shell``'s display formatter (replacing earlier ones)."""
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    class OwnTypeFormatter(BaseFormatter):
        """A formatter that makes its format for one class itself, before IPython's registry
        (see the module docstring), and otherwise defers to it and to the object's method."""

        _return_type = (dict,)

        def __init__(self, own_class: tuple[str, str], make: Any, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._own_class = own_class
            self._make = make

        def __call__(self, obj: Any) -> Any:
            if self.enabled and _is_instance(obj, self._own_class):
                return self._make(obj)
            return super().__call__(obj)

    class ChartFormatter(OwnTypeFormatter):
        format_type = Unicode(CHART_MIME)
        print_method = ObjectName(CHART_METHOD)

    class DataFormatter(OwnTypeFormatter):
        format_type = Unicode(DATA_MIME)
        print_method = ObjectName(DATA_METHOD)

    display = shell.display_formatter
    display.formatters[CHART_MIME] = ChartFormatter(FIGURE_CLASS, figure_chart, parent=display)
    display.formatters[DATA_MIME] = DataFormatter(DATAFRAME_CLASS, frame_data, parent=display)


def _is_instance(obj: Any, module_and_name: tuple[str, str]) -> bool:
    module = sys.modules.get(module_and_name[0])
    cls = getattr(module, module_and_name[1], None) if module is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def figure_chart(figure: Any) -> dict | None:
    """e2b_charts' description of a matplotlib figure as strict JSON, or None (no extractor, no
    data, or a figure it cannot read: it raises on some, a box plot with a zero-length whisker)."""
    try:
        extractor = importlib.import_module("e2b_charts")
        with warnings.catch_warnings():
            # Its pydantic models warn when serialising numpy tick values (a box plot's), and a
            # warning here is printed into the user's cell as stderr.
            warnings.simplefilter("ignore")
            chart = extractor.chart_figure_to_dict(figure)
        return _json_value(chart) if isinstance(chart, dict) and chart else None
    except Exception:  # noqa: BLE001 - a chart is optional; the figure's other formats are not
        return None


def frame_data(frame: Any) -> dict | None:
    """A DataFrame's columns as strict JSON (see the module docstring), or None."""
    try:
        columns = frame.to_dict(orient="list")
        return {_json_key(name): [_json_value(v) for v in values] for name, values in columns.items()}
    except Exception:  # noqa: BLE001 - as in figure_chart: the frame's text and HTML still go out
        return None


def _json_key(key: Any) -> str:
    return key if isinstance(key, str) else str(key)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {_json_key(k): _json_value(v) for k, v in value.items()}
    if _is_missing(value):  # NaT, NA, numpy NaN: checked before isoformat (NaT has one too)
        return None
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):  # pandas.Timestamp too
        return value.isoformat()
    item = getattr(value, "item", None)  # numpy scalars in object columns: their Python value
    if callable(item):
        try:
            plain = item()
        except Exception:  # noqa: BLE001 - arrays of several items, say: shown as text below
            plain = value
        if plain is not value and not hasattr(plain, "item"):
            return _json_value(plain)
    return str(value)


def _is_missing(value: Any) -> bool:
    pandas = sys.modules.get("pandas")
    if pandas is None:
        return False
    try:
        return pandas.isna(value) is True
    except Exception:  # noqa: BLE001 - objects pandas cannot judge are not missing values
        return False
