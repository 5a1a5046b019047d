"""`python -m services.envd` / `cube-envd`: the Cube guest agent."""

from __future__ import annotations

import sys

from cube_common import jsonlog

from .server import run
from .settings import parse_settings


def main(argv: list[str] | None = None) -> None:
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    jsonlog.setup("envd", settings.log_level)
    run(settings)


if __name__ == "__main__":
    main()
