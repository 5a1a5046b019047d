"""Volume benchmark: the unmodified E2B Python SDK against the running node (`make up`).

    .venv/bin/python bench/volume_bench.py [--n 20] [--mib 8]

Each of n rounds, one after the other:
  create_ms                  Sandbox.create() of the default template, no volume (the warm pool's
                             path): the baseline of this run
  create_with_volume_ms      Sandbox.create(volume_mounts={"/mnt/v": vol}): a clone with the image
                             in a volume slot, the guest told its size and mounting it
  first_read_ms              the first files.read() of a file on the volume in that sandbox
  kill_with_volume_ms        kill() of it (the guest writes back first)
  content_write_ms / content_read_ms   vol.write_file / vol.read_file of --mib MiB through the
                             proxy's api.<domain> route (no sandbox mounts the volume)
  create_volume_ms / destroy_volume_ms Volume.create / Volume.destroy (a fresh volume per round)
Ratios against the same run's baseline: create_with_volume_vs_create_p50.

Progress goes to stderr; the last stdout line is one JSON object.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import emit, machine, point_sdk_at_node, progress, summary  # noqa: E402
from deploy.supervisor import NodeConfig  # noqa: E402

CFG = NodeConfig.from_env()


def ms(t0: float) -> float:
    return (time.monotonic() - t0) * 1000


def main() -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--mib", type=int, default=8)
    args = p.parse_args()
    point_sdk_at_node(CFG)
    from e2b import Volume
    from e2b_code_interpreter import Sandbox

    figures: dict[str, list[float]] = {k: [] for k in (
        "create_ms", "create_with_volume_ms", "first_read_ms", "kill_with_volume_ms", "content_write_ms",
        "content_read_ms", "create_volume_ms", "destroy_volume_ms")}
    payload = os.urandom(args.mib << 20)
    meta = {"bench": f"volume-{os.getpid()}"}
    for i in range(args.n):
        progress(f"round {i + 1}/{args.n}")
        t0 = time.monotonic()
        vol = Volume.create(f"bench-{os.getpid()}-{i}")
        figures["create_volume_ms"].append(ms(t0))
        try:
            t0 = time.monotonic()
            vol.write_file("/payload.bin", payload)
            figures["content_write_ms"].append(ms(t0))
            t0 = time.monotonic()
            back = vol.read_file("/payload.bin", format="bytes")
            figures["content_read_ms"].append(ms(t0))
            assert back == payload, "the volume gave back other bytes"

            t0 = time.monotonic()
            plain = Sandbox.create(metadata=meta)
            figures["create_ms"].append(ms(t0))
            plain.kill()

            t0 = time.monotonic()
            sbx = Sandbox.create(metadata=meta, volume_mounts={"/mnt/v": vol})
            figures["create_with_volume_ms"].append(ms(t0))
            try:
                t0 = time.monotonic()
                head = sbx.commands.run("head -c 16 /mnt/v/payload.bin | od -An -tx1").stdout
                figures["first_read_ms"].append(ms(t0))
                assert bytes.fromhex(head.replace(" ", "").strip()) == payload[:16], head
            finally:
                t0 = time.monotonic()
                sbx.kill()
                figures["kill_with_volume_ms"].append(ms(t0))
        finally:
            t0 = time.monotonic()
            Volume.destroy(vol.volume_id)
            figures["destroy_volume_ms"].append(ms(t0))
    out: dict = {k: summary(v) for k, v in figures.items()}
    out["create_with_volume_vs_create_p50"] = round(out["create_with_volume_ms"]["p50"] / out["create_ms"]["p50"], 2)
    out["content_mib"] = args.mib
    out["machine"] = machine()
    return out


if __name__ == "__main__":
    os.chdir(REPO)
    emit(main())
