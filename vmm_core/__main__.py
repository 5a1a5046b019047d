"""`python -m vmm_core artifacts`: build (or find cached) the guest kernel, initramfs and base image."""
from __future__ import annotations

import argparse
import json
import logging

from . import accel
from .artifacts import ensure_guest_artifacts
from .settings import VmmSettings


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m vmm_core")
    p.add_argument("command", choices=["artifacts"])
    p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = VmmSettings.from_env()
    g = ensure_guest_artifacts(settings)
    print(json.dumps({"accel": accel.resolve(settings.accel).value, "kernel": str(g.kernel.vmlinuz),
                      "kernel_version": g.kernel.key, "initramfs": str(g.initramfs.path),
                      "base_image": str(g.base_image.path), "key": g.key}, indent=1))


if __name__ == "__main__":
    main()
