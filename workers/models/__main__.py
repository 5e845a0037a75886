"""Command line: ``python -m workers.models build-tiny DIR``.

Builds the tiny random edit pipelines (``DIR/tiny-qwen-image-edit``,
``DIR/tiny-qwen-image-edit-plus``, ``DIR/tiny-flux-kontext``) and the tiny random
Qwen3-VL into ``DIR/tiny-qwen3-vl`` (the same places and the same way as a worker
whose model settings name them) and prints their paths.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from config import TINY_EDITORS, TINY_MODEL
from workers.models.loading import EDITOR, QWEN3_VL, resolve_model_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers.models")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build-tiny", help="build the tiny random Qwen3-VL and edit pipelines"
    )
    build.add_argument("models_dir", type=Path, metavar="DIR", help="models directory")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "build-tiny":
        for editor in TINY_EDITORS:
            print(resolve_model_path(editor, args.models_dir, kind=EDITOR))
        # The Qwen3-VL path stays the final line, alone, as scripts expect:
        # MODEL=$(python -m workers.models build-tiny DIR | tail -1)
        print(resolve_model_path(TINY_MODEL, args.models_dir, kind=QWEN3_VL))


if __name__ == "__main__":
    main()
