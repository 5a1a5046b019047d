"""A tiny template root filesystem for microVM tests and benchmarks: static busybox serving CGI
over HTTP.

It has no libc and no Python, like the smallest images users bring. Its HTTP service lets a test
read and write files on the sandbox disk and read a counter kept by a process that only lives in
guest memory, which is what snapshot, clone and save/restore must preserve. `build(root)` replaces
whatever is at `root`; the caller owns that directory.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

HTTP_PORT = 8080

_CGI = {
    # GET /cgi-bin/put?NAME=VALUE  -> writes /data/NAME
    "put": 'k="${QUERY_STRING%%=*}"; v="${QUERY_STRING#*=}"; mkdir -p /data; echo "$v" > "/data/$k"; sync; echo ok',
    # GET /cgi-bin/keep?NAME=VALUE -> writes /data/NAME, left in the guest's page cache (no sync)
    "keep": 'k="${QUERY_STRING%%=*}"; v="${QUERY_STRING#*=}"; mkdir -p /data; echo "$v" > "/data/$k"; echo ok',
    # GET /cgi-bin/memo?NAME=VALUE -> keeps VALUE in guest memory only (tmpfs)
    "memo": 'k="${QUERY_STRING%%=*}"; v="${QUERY_STRING#*=}"; echo "$v" > "/dev/shm/memo-$k"; echo ok',
    # GET /cgi-bin/recall?NAME      -> what memo kept
    "recall": 'cat "/dev/shm/memo-$QUERY_STRING" 2>/dev/null || echo MISSING',
    # GET /cgi-bin/get?NAME        -> contents of /data/NAME
    "get": 'cat "/data/$QUERY_STRING" 2>/dev/null || echo MISSING',
    # GET /cgi-bin/counter         -> "<pid> <count>" of the in-memory counter process
    "counter": "cat /dev/shm/counter 2>/dev/null || echo NONE",
    # GET /cgi-bin/random          -> 16 bytes from the guest kernel RNG, hex
    "random": "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'",
    # GET /cgi-bin/clock           -> guest wall clock, seconds since the epoch
    "clock": "date +%s",
}

COUNTER = 'i=0; while :; do i=$((i+1)); echo "$$ $i" > /dev/shm/counter; sleep 0.2; done'


def build(root: Path) -> Path:
    if root.exists():
        shutil.rmtree(root)
    for d in ("bin", "www/cgi-bin", "data", "tmp", "proc", "sys", "dev", "run", "etc"):
        (root / d).mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "cat", "echo", "mkdir", "sleep", "head", "od", "tr", "date", "sync", "httpd", "ls"):
        os.symlink("busybox", root / "bin" / applet)
    (root / "www/index.html").write_text("cube probe\n")
    for name, body in _CGI.items():
        p = root / "www/cgi-bin" / name
        p.write_text(f"#!/bin/sh\necho 'Content-Type: text/plain'\necho\n{body}\n")
        p.chmod(0o755)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root
