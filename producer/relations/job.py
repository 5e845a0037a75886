"""The relations job as the producer's CLI, preflight and status see it (``producer/job.py``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

from celery import Celery

from config import TINY_MODEL, Settings
from producer.job import Job, positive
from producer.progress import stall_watch, wait_for_stage
from producer.relations.enqueue import Enqueued, enqueue_relations
from producer.relations.report import write_relations_report
from producer.relations.sample import ensure_relations_sample, write_relations_sample
from shared import storage
from shared.messages import RELATIONS_STAGE, RELATIONS_TASK
from shared.store import RunStore

# The command's logger: the line about what was enqueued is part of what the command prints.
log = logging.getLogger("producer")

# Said when a run is registered with EVALFLEET_BENCH_TOKEN_BUDGETS.
BENCH_WARNING = ("EVALFLEET_BENCH_TOKEN_BUDGETS=%s is on: a setting for benchmarks only; every "
                 "description ends at a drawn length, so this run's results are benchmark-shaped, "
                 "not a real run's")

# The flags that replace a setting of the same name.
SETTING_FLAGS = ("top_k", "batch_size", "relations_model")


class RelationsJob(Job):
    name = "relations"
    help = "descriptions for the top-K predicates of subject-object pairs"
    stages = (RELATIONS_STAGE,)
    report_name = "stage2_generated_results.json"
    enqueue_help = "a relations run (needs EVALFLEET_BROKER_URL)"

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        # The seed script's spellings (README, Layout: Baselines) are accepted too: --stage1_result, --top_k, ...
        parser.add_argument("--stage1", "--stage1_result", help="recall_results_*.json of stage 1")
        parser.add_argument("--input", "--input_data", help="the input image records (test_2000_images.json)")
        parser.add_argument("--top-k", "--top_k", type=positive, dest="top_k")
        parser.add_argument("--batch-size", "--batch_size", type=positive, dest="batch_size",
                            help="accepted for compatibility, unused: the decoder's batch is "
                                 "EVALFLEET_MAX_BATCH")
        parser.add_argument("--model", "--model_path", dest="relations_model", help="hub id or local path")

    def flag_settings(self, args: argparse.Namespace) -> dict[str, Any]:
        return {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name, None) is not None}

    def models(self, settings: Settings) -> list[tuple[str, str, tuple[str, ...]]]:
        if settings.relations_backend == "endpoint":  # the endpoint serves the model: none here
            return []
        return [("relations_model", settings.relations_model, (TINY_MODEL,))]

    def queues(self, settings: Settings) -> list[str]:
        return [settings.queue_relations]

    def inputs(self, args: argparse.Namespace, settings: Settings, sample: bool = True) -> list[str | Path]:
        if args.stage1 and args.input:  # each a file or an object's URL
            return [storage.as_location(args.stage1), storage.as_location(args.input)]
        if not sample:
            raise SystemExit("enqueue needs --stage1 and --input")
        if args.stage1 or args.input:
            raise SystemExit("give both --stage1 and --input, or neither to run the built-in sample")
        return list(ensure_relations_sample(settings.work_dir / "sample"))

    def register(self, settings: Settings, app: Celery, store_client, inputs: list[str | Path],
                 run_name: str | None, restart: bool) -> Enqueued:
        stage1, input_path = inputs
        if settings.token_budgets:
            log.warning(BENCH_WARNING, settings.token_budgets.spec)
        enq = enqueue_relations(settings, app, store_client, stage1, input_path, run_name, restart)
        log.info("run %s: %d items, %d already done, %d invalid; sent %d pairs in %d tasks; "
                 "candidates: %d \"no relation\" dropped, %d repeated predicates merged",
                 enq.run_id, enq.total, enq.already_done, enq.invalid, enq.pairs_sent, enq.tasks_sent,
                 enq.dropped_no_relation, enq.merged_repeats)
        return enq

    def drive(self, settings: Settings, app: Celery, run: Enqueued, store: RunStore,
              check: Callable[[], None], args: argparse.Namespace) -> None:
        # Registering sent every task: what is left is to wait for them.
        wait_for_stage(store, RELATIONS_STAGE, settings.poll_interval_seconds, check,
                       stall=stall_watch(settings, app, settings.queue_relations, RELATIONS_TASK))

    def write_report(self, store: RunStore, output: Path) -> dict[str, Any]:
        return write_relations_report(store, output)

    def failures(self, report: dict[str, Any]) -> list[dict[str, Any]]:
        return report["failed"]

    def summary(self, report: dict[str, Any], output: Path) -> str:
        summary = report["summary"]
        lines = [f"run {summary['run_id']}: {summary['total_pairs']} pairs from {summary['total_images']} "
                 f"images done, {len(report['failed'])} failed", f"report: {output}"]
        if "bench_token_budgets" in summary:
            lines.append(f"benchmark-shaped: lengths drawn from {summary['bench_token_budgets']}, not a real run")
        lines += [f"  failed {failure['key']}: {failure['reason']}" for failure in report["failed"]]
        return "\n".join(lines)

    def write_sample(self, directory: Path, args: argparse.Namespace) -> str:
        stage1, input_path = write_relations_sample(directory)
        return f"--stage1 {stage1} --input {input_path}"
