"""``python -m workers launch --gpus 0,1 --workers-per-gpu 2 -Q relations``."""

from __future__ import annotations

import argparse
import logging
import sys

from workers.celery_app import settings
from workers.launch import plan_workers, run_workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers")
    sub = parser.add_subparsers(dest="command", required=True)
    launch = sub.add_parser("launch", help="start one Celery worker per GPU")
    launch.add_argument("--gpus", default="all",
                        help='"all" (the visible GPUs; a CPU worker if none), "cpu", or indices like 0,1')
    launch.add_argument("--workers-per-gpu", type=int, default=settings.workers_per_gpu,
                        help="Celery --concurrency of each worker (default: EVALFLEET_WORKERS_PER_GPU)")
    launch.add_argument("-Q", "--queues", default=",".join(
        (settings.queue_relations, settings.queue_edit, settings.queue_score)))
    launch.add_argument("--loglevel", default="INFO")
    launch.add_argument("--name-prefix", default="",
                        help="prefix of the Celery node names, to run several launchers on one host")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher %(levelname)s %(message)s")
    if args.workers_per_gpu < 1:
        parser.error("--workers-per-gpu must be at least 1")
    specs = plan_workers(args.gpus, args.queues.split(","), args.workers_per_gpu, args.loglevel,
                         args.name_prefix)
    return run_workers(specs)


if __name__ == "__main__":
    sys.exit(main())
