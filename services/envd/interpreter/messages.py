"""The NDJSON lines of `POST /execute`, and the Jupyter MIME bundle -> result mapping."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class OutputLine:
    """One line of the /execute stream."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return json.dumps({"type": self.type, **self.fields}, separators=(",", ":")).encode() + b"\n"


def stdout(text: str) -> OutputLine:
    return OutputLine("stdout", {"text": text, "timestamp": _now()})


def stderr(text: str) -> OutputLine:
    return OutputLine("stderr", {"text": text, "timestamp": _now()})


def number_of_executions(count: int) -> OutputLine:
    return OutputLine("number_of_executions", {"execution_count": count})


def error(name: str, value: str, traceback: str) -> OutputLine:
    return OutputLine("error", {"name": name, "value": value, "traceback": traceback})


def end_of_execution() -> OutputLine:
    return OutputLine("end_of_execution")


def keepalive() -> OutputLine:
    return OutputLine("keepalive")


# Jupyter MIME type -> key of the SDK's Result.
_MIME_KEYS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}


def _unquote(text: str) -> str:
    # A str value's repr is quoted; the SDK's users expect the string itself. E2B's server strips
    # one pair of matching quotes from every text/plain the same way (its Result model), so there
    # too run_code("'a'").text is "a", not IPython's "'a'". Unlike it, a multi-line text is kept
    # whole: a str's repr is one line, and a multi-line text between quotes is another repr, such
    # as node's util.inspect of a long string ("'a\n' +\n  'b'"), which stripping would mangle.
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and "\n" not in text:
        return text[1:-1]
    return text


def result(bundle: dict[str, Any], is_main_result: bool) -> OutputLine:
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for mime, value in bundle.items():
        key = _MIME_KEYS.get(mime)
        if key is None:
            extra[mime] = value
            continue
        if isinstance(value, list) and key not in ("json", "data", "chart"):
            value = "".join(value)  # notebook-style multiline strings
        if key in ("png", "jpeg") and isinstance(value, str):
            value = value.replace("\n", "")
        if key == "text" and isinstance(value, str):
            value = _unquote(value)
        fields[key] = value
    if extra:
        fields["extra"] = extra
    fields["is_main_result"] = is_main_result
    return OutputLine("result", fields)
