"""`python -m services.envd` / `cube-envd`: the Cube guest agent."""

from __future__ import annotations

import sys

from .log import setup_logging
from .server import run
from .settings import parse_settings


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    setup_logging(settings.log_level)
    run(settings)


if __name__ == "__main__":
    main()
