"""Command line: ``python -m workers.models build-tiny DIR``.

Builds the tiny random Qwen3-VL into ``DIR/tiny-qwen3-vl`` (the same place and
the same way as a worker whose model setting is ``tiny``) and prints its path.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from config import TINY_MODEL
from workers.models.loading import resolve_model_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.models")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-tiny", help="build the tiny random Qwen3-VL model")
    build.add_argument("models_dir", type=Path, metavar="DIR", help="models directory")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "build-tiny":
        # The final line is the path alone, for scripts: MODEL=$(python -m workers.models build-tiny DIR | tail -1)
        print(resolve_model_path(TINY_MODEL, args.models_dir))


if __name__ == "__main__":
    main()
