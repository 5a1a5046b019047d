"""Imports everything the agent will ever need before it enters the template root.

After chroot the agent's own Python installation (from the guest base image) is out of sight:
any module imported lazily later, any codec looked up by name, any data file read on demand would
fail or, worse, come from the template. So load it all here, while it is still reachable.
"""

from __future__ import annotations

import importlib

# Modules that the standard library, aiohttp, protobuf, zmq and jupyter_client import lazily
# (inside functions) on paths the agent uses.
_MODULES = [
    "encodings", "encodings.utf_8", "encodings.utf_8_sig", "encodings.ascii", "encodings.latin_1",
    "encodings.idna", "encodings.raw_unicode_escape", "encodings.unicode_escape",
    "encodings.utf_16", "encodings.utf_32", "encodings.cp437", "encodings.charmap",
    "codecs", "json", "json.decoder", "json.encoder", "base64", "binascii", "hashlib", "hmac",
    "secrets", "uuid", "zlib", "gzip", "struct", "ssl", "socket", "select", "selectors",
    "fcntl", "termios", "tty", "pty", "signal", "errno", "stat", "shutil", "tempfile",
    "subprocess", "_posixsubprocess", "threading", "concurrent.futures", "concurrent.futures.thread",
    "asyncio", "asyncio.unix_events", "asyncio.selector_events", "asyncio.base_subprocess",
    "ctypes", "ctypes.util", "platform", "posixpath", "datetime", "zoneinfo", "email",
    "email.parser", "email.message", "email.utils", "email.header", "email.charset",
    "email.feedparser", "email._header_value_parser", "email.headerregistry", "email.policy",
    "http", "http.cookies", "urllib.parse", "mimetypes", "queue", "logging", "traceback",
    "linecache", "inspect", "textwrap", "shlex", "re", "unicodedata", "weakref", "contextlib",
    "aiohttp", "aiohttp.web", "aiohttp.multipart", "aiohttp.web_fileresponse",
    "aiohttp.http_parser", "aiohttp.http_writer", "aiohttp.compression_utils",
    "aiohttp.web_exceptions", "aiohttp.web_urldispatcher", "multidict", "yarl",
    "google.protobuf", "google.protobuf.json_format", "google.protobuf.timestamp_pb2",
    "google.protobuf.descriptor_pb2", "google.protobuf.struct_pb2", "google.protobuf.any_pb2",
    "google.protobuf.duration_pb2", "google.protobuf.field_mask_pb2", "google.protobuf.wrappers_pb2",
    "google.protobuf.descriptor_pool", "google.protobuf.internal.well_known_types",
    "zmq", "zmq.asyncio", "zmq.backend", "zmq.sugar", "zmq.utils.jsonapi",
    "jupyter_client", "jupyter_client.asynchronous", "jupyter_client.asynchronous.client",
    "jupyter_client.session", "jupyter_client.channels", "jupyter_client.jsonutil",
    "jupyter_client.adapter", "jupyter_client.connect", "jupyter_client.utils",
    "dateutil", "dateutil.parser", "dateutil.tz", "traitlets", "tornado", "tornado.ioloop",
    "services.envd.gen.process_pb2", "services.envd.gen.filesystem_pb2",
]


def load_everything() -> None:
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # optional on some builds (e.g. zoneinfo data, ssl)
    import mimetypes

    mimetypes.init()  # reads the base image's mime.types now, not the template's later
    # Codecs are found by name through a search function that imports lazily.
    for codec in ("utf-8", "ascii", "latin-1", "idna", "utf-16", "utf-32"):
        "x".encode(codec)
    # jupyter_client's Session and zmq.asyncio set up lazily on first use.
    from jupyter_client.session import Session

    Session(key=b"warmup").msg("kernel_info_request")
    # aiohttp's multipart reader and the JSON timestamp types resolve helpers on first use.
    from google.protobuf import json_format, timestamp_pb2

    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(1)
    json_format.MessageToDict(ts)
    json_format.Parse('"1970-01-01T00:00:00Z"', timestamp_pb2.Timestamp())
    _warm_messages()
    import datetime

    datetime.datetime.fromisoformat("2025-01-01T00:00:00+00:00")
    datetime.datetime.now(datetime.UTC).isoformat()
    import time

    time.strftime("%Y")  # loads locale/time state


def _warm_messages() -> None:
    """Runs the proto3-JSON mapping over every message shape the services use (maps, oneofs,
    bytes, enums, int64, Timestamp): json_format imports helpers on first use of each."""
    from google.protobuf import json_format

    from .gen import filesystem_pb2 as fs, process_pb2 as pr

    samples = [
        (pr.StartRequest, {"process": {"cmd": "/bin/sh", "args": ["-c", "x"], "envs": {"A": "b"},
                                       "cwd": "/"}, "pty": {"size": {"cols": 80, "rows": 24}},
                           "tag": "t", "stdin": False}),
        (pr.SendInputRequest, {"process": {"pid": 1}, "input": {"stdin": "eA=="}}),
        (pr.StreamInputRequest, {"data": {"input": {"pty": "eA=="}}}),
        (pr.SendSignalRequest, {"process": {"tag": "t"}, "signal": "SIGNAL_SIGKILL"}),
        (pr.UpdateRequest, {"process": {"pid": 1}, "pty": {"size": {"cols": 1, "rows": 1}}}),
        (fs.WatchDirRequest, {"path": "/", "recursive": True, "includeEntry": True}),
        (fs.EntryInfo, {"name": "a", "type": "FILE_TYPE_FILE", "path": "/a", "size": "5",
                        "mode": 420, "modifiedTime": "2025-01-01T00:00:00Z", "symlinkTarget": "/b",
                        "metadata": {"k": "v"}, "isSymlink": True}),
        (fs.ListDirResponse, {"entries": [{"name": "a", "size": 1}]}),
        (fs.GetWatcherEventsResponse, {"events": [{"name": "a", "type": "EVENT_TYPE_CREATE"}]}),
    ]
    for cls, body in samples:
        import json

        msg = json_format.Parse(json.dumps(body), cls(), ignore_unknown_fields=True)
        json_format.Parse(json_format.MessageToJson(msg), cls())
        json_format.MessageToDict(msg, preserving_proto_field_name=False)
    end = pr.ProcessEvent(end=pr.ProcessEvent.EndEvent(exit_code=-1, status="s", error="e"))
    json_format.MessageToDict(pr.StartResponse(event=end))
    json_format.MessageToDict(pr.ListResponse(processes=[pr.ProcessInfo(pid=1, tag="t")]))
    import signal
    import stat

    signal.strsignal(signal.SIGKILL)
    stat.filemode(0o100644)
