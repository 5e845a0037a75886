"""``python -m producer {run,enqueue,report,sample} {relations,editbench} ...``,
``python -m producer status [--run NAME] [--json]``, ``python -m producer validate editbench FILE``
and ``python -m producer compare REPORT [REPORT ...] [--output FILE]``.

Exit codes: 0 every item done; 1 the run finished but some items failed (the report
lists them); 2 bad usage, an unusable input file, a run name taken by other settings,
an unknown run (nothing registered); 3 infrastructure: Redis unreachable, or the local
workers died; 4 crashed (a bug: one line here, the traceback in <work dir>/logs/producer.log);
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

import redis

from config import (LORA_SEPARATOR, Settings, SettingsError, ignored_variables, load_settings,
                    to_environ)
from producer.dispatch import celery_client
from producer.editbench.phases import PHASE_SCOPES, PhaseController
from producer.editbench.register import register_editbench
from producer.editbench.report import write_editbench_report
from producer.editbench.sample import ensure_editbench_sample, write_editbench_sample
from producer.editbench.validate import format_validation
from producer.embedded import EmbeddedRedis, InfrastructureError, LocalFleet
from producer.preflight import check_output_path, check_run_settings, check_writable_dir
from producer.progress import stall_watch, wait_for_stage
from producer.relations.enqueue import enqueue_relations
from producer.relations.report import write_relations_report
from producer.relations.sample import ensure_relations_sample, write_relations_sample
from producer.editbench.comparison import (ApproximateComparisonError, compare_runs, comparison_files,
                                     comparison_markdown, load_run, write_comparison)
from producer.run_identity import RESTART_FLAG, RunMismatchError
from producer.status import build_status, format_status
from shared.editbench.data import SHAPES, prepare_benchmark
from shared.errors import InputFileError
from shared.keys import check_run_name
from shared.messages import RELATIONS_STAGE, RELATIONS_TASK
from shared.store import RunStore, connect

log = logging.getLogger("producer")

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_INFRA, EXIT_CRASH, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


@contextlib.contextmanager
def broker_for(settings: Settings) -> Iterator[tuple[Settings, bool]]:
    """The configured broker, or an embedded redis-server over the work directory's data."""
    if settings.broker_url:
        yield settings, False
        return
    check_writable_dir(settings.work_dir / "redis", "EVALFLEET_WORK_DIR")
    with EmbeddedRedis(settings.work_dir / "redis") as server:
        yield settings.replace(broker_url=server.url), True


@contextlib.contextmanager
def local_fleet(args: argparse.Namespace, settings: Settings, embedded: bool, queues: list[str],
                needed: bool = True) -> Iterator[Callable[[], None]]:
    """Start local workers when asked (default: with the embedded Redis); yields a liveness check."""
    local = args.local_workers if args.local_workers is not None else embedded
    if not (local and needed):
        yield lambda: None
        return
    with LocalFleet(to_environ(settings), queues, settings.work_dir / "logs" / "workers.log",
                    gpus=args.gpus) as fleet:
        yield fleet.check


def _inputs(args: argparse.Namespace, settings: Settings) -> tuple[Path, Path]:
    if args.stage1 and args.input:
        return Path(args.stage1), Path(args.input)
    if args.stage1 or args.input:
        raise SystemExit("give both --stage1 and --input, or neither to run the built-in sample")
    return ensure_relations_sample(settings.work_dir / "sample")


def _apply_flags(args: argparse.Namespace, settings: Settings) -> Settings:
    changes = {name: getattr(args, name) for name in ("top_k", "batch_size", "relations_model",
                                                      "workers_per_gpu", "judge_rubric")
               if getattr(args, name, None) is not None}
    if getattr(args, "lora", None):
        if any(LORA_SEPARATOR in lora for lora in args.lora):
            raise SettingsError(f"--lora {args.lora}: a LoRA path cannot contain {LORA_SEPARATOR!r}")
        # The flags replace EVALFLEET_EDITOR_LORAS.
        changes["editor_loras"] = LORA_SEPARATOR.join(args.lora)
    return settings.replace(**changes)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    return cmd_run_relations(args, settings) if args.job == "relations" else cmd_run_editbench(args, settings)


def _preflight(args: argparse.Namespace, settings: Settings, job: str) -> None:
    """Before anything is registered: settings and paths that would fail the run, named (exit 2)."""
    check_run_settings(settings, job)
    check_writable_dir(settings.work_dir, "EVALFLEET_WORK_DIR")
    if job == "editbench":
        check_writable_dir(settings.artifacts, "EVALFLEET_ARTIFACT_ROOT")
    if getattr(args, "output", None):
        check_output_path(Path(args.output))


def cmd_run_relations(args: argparse.Namespace, settings: Settings) -> int:
    _preflight(args, settings, "relations")
    stage1, input_path = _inputs(args, settings)
    with broker_for(settings) as (settings, embedded):
        client, app = connect(settings.store_url), celery_client(settings)
        enq = enqueue_relations(settings, app, client, stage1, input_path, args.run, args.restart)
        _log_enqueued(enq)
        store = RunStore(client, enq.run_id)
        with local_fleet(args, settings, embedded, [settings.queue_relations], enq.pairs_sent > 0) as check:
            progress = wait_for_stage(store, RELATIONS_STAGE, settings.poll_interval_seconds, check,
                                      stall=stall_watch(settings, app, settings.queue_relations,
                                                        RELATIONS_TASK))
        output = Path(args.output) if args.output else settings.work_dir / enq.run_id / "stage2_generated_results.json"
        report = write_relations_report(store, output)
    summary = report["summary"]
    print(f"run {enq.run_id}: {summary['total_pairs']} pairs from {summary['total_images']} images done, "
          f"{progress.failed} failed\nreport: {output}")
    for failure in report["failed"]:
        print(f"  failed {failure['key']}: {failure['reason']}")
    return EXIT_FAILED_ITEMS if progress.failed else EXIT_OK


def cmd_run_editbench(args: argparse.Namespace, settings: Settings) -> int:
    _preflight(args, settings, "editbench")
    benchmark = Path(args.benchmark) if args.benchmark else ensure_editbench_sample(settings.work_dir / "sample")
    with broker_for(settings) as (settings, embedded):
        run = register_editbench(settings, connect(settings.store_url), benchmark, args.run, args.restart)
        queues = [settings.queue_edit, settings.queue_score]
        with local_fleet(args, settings, embedded, queues) as check:
            PhaseController(settings, celery_client(settings), run, check).drive(args.phase_scope)
        output = Path(args.output) if args.output else settings.work_dir / run.store.run_id / "editbench_report.json"
        report = write_editbench_report(run.store, output)
    _print_editbench(report, output)
    return EXIT_FAILED_ITEMS if report["failures"] else EXIT_OK


def _print_editbench(report: dict, output: Path) -> None:
    print(f"run {report['run']['run_id']}")
    print(f"  {'category':<14}{'pairs':>6}{'scored':>7}{'failed':>7}{'mean':>8}")
    for name, cat in report["categories"].items():
        mean = f"{cat['mean']:.3f}" if cat["mean"] is not None else "-"
        print(f"  {name:<14}{cat['pairs']:>6}{cat['scored']:>7}{cat['failed']:>7}{mean:>8}")
    overall = report["overall"]
    figures = (f"mean={overall['mean']:.3f} std={overall['std']:.3f}" if overall["mean"] is not None
             else "mean=- std=-")
    print(f"  overall: n={overall['n']} {figures}; swaps: {len(report['swaps'])}")
    if len(report["criteria"]) > 1:
        for name, crit in report["criteria"].items():
            print(f"  {name}: n={crit['n']} mean={crit['mean']} std={crit['std']} failed={crit['failed']}")
    for failure in report["failures"]:
        print(f"  failed {failure['key']} ({failure['stage']}): {failure['reason']}")
    print(f"report: {output}\nchart: {report['chart']}")


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.broker_url:
        raise SystemExit("enqueue needs a running fleet: set EVALFLEET_BROKER_URL "
                         "(or use `python -m producer run relations` for one-command mode)")
    check_run_settings(settings, "relations")
    enq = enqueue_relations(settings, celery_client(settings), connect(settings.store_url),
                            Path(args.stage1), Path(args.input), args.run, args.restart)
    _log_enqueued(enq)
    print(enq.run_id)
    return EXIT_OK


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    if args.output:
        check_output_path(Path(args.output))
    with broker_for(settings) as (settings, _):
        store = RunStore(connect(settings.store_url), args.run)
        if not store.exists():
            raise SystemExit(f"run {args.run!r} is not registered in this Redis "
                             "(`python -m producer status` lists the runs)")
        job = store.meta().get("job")
        if job != args.job:
            raise SystemExit(f"run {args.run!r} is a run of the {job} job, not {args.job}: "
                             f"`python -m producer report {job} --run {args.run}`")
        if args.job == "relations":
            output = Path(args.output or "stage2_generated_results.json")
            report = write_relations_report(store, output)
            failed = report["failed"]
        else:
            output = Path(args.output or "editbench_report.json")
            report = write_editbench_report(store, output)
            failed = report["failures"]
    print(f"{len(failed)} failed: {output}")
    return EXIT_FAILED_ITEMS if failed else EXIT_OK


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with broker_for(settings) as (settings, _):
        try:
            status = build_status(settings, celery_client(settings), args.run, args.timeout)
        except LookupError as exc:
            raise SystemExit(str(exc)) from None
    print(json.dumps(status, indent=2, ensure_ascii=False) if args.json else format_status(status))
    return EXIT_OK


def cmd_sample(args: argparse.Namespace, settings: Settings) -> int:
    if args.job == "relations":
        if args.shape or args.image_files:
            raise SystemExit("--shape and --image-files are for the editbench sample")
        stage1, input_path = write_relations_sample(Path(args.directory))
        print(f"--stage1 {stage1} --input {input_path}")
    else:
        benchmark = write_editbench_sample(Path(args.directory), args.shape or "category-map", args.image_files)
        print(f"--benchmark {benchmark}")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Read the file as a run would; register nothing. Exit 0 when clean, 2 with problems."""
    prepared = prepare_benchmark(Path(args.file), settings.data_root)
    print(format_validation(Path(args.file), prepared))
    return EXIT_USAGE if prepared.failures else EXIT_OK


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    """Compare runs from their reports; needs no Redis. Exit 2 when a report is unusable."""
    if args.output:
        check_output_path(Path(args.output))
        comparison_files(Path(args.output))
    comparison = compare_runs([load_run(Path(run)) for run in args.runs],
                              allow_approximate=args.allow_approximate)
    if args.output:
        markdown, chart = write_comparison(comparison, Path(args.output))
        print(f"comparison: {args.output}\ntable: {markdown}\nchart: {chart}")
    else:
        print(comparison_markdown(comparison), end="")
    return EXIT_OK


def _log_enqueued(enq) -> None:
    log.info("run %s: %d items, %d already done, %d invalid; sent %d pairs in %d tasks",
             enq.run_id, enq.total, enq.already_done, enq.invalid, enq.pairs_sent, enq.tasks_sent)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    # run and enqueue: one sub-command per job, each with its own flags only, so a flag of
    # the other job is a usage error instead of being parsed and ignored.
    run = sub.add_parser("run", help="enqueue, wait with a progress bar, write the report (one command)")
    run_jobs = run.add_subparsers(dest="job", required=True)
    for job, help_ in (("relations", "descriptions for the top-K predicates of subject-object pairs"),
                       ("editbench", "edit the benchmark's images, then score them with the judge")):
        p = run_jobs.add_parser(job, help=help_)
        _add_relations_flags(p) if job == "relations" else _add_editbench_flags(p)
        _add_run_flags(p)
        p.add_argument("--output", help="report path (default: under <work dir>/<run>/)")
        p.add_argument("--gpus", default="all", help="GPUs for local workers: all, cpu, or 0,1")
        p.add_argument("--local-workers", action=argparse.BooleanOptionalAction, default=None,
                       help="start workers here (default: only with the embedded Redis)")
        p.set_defaults(func=cmd_run)

    enqueue = sub.add_parser("enqueue", help="register a run and enqueue its pending items on a running fleet")
    enqueue_jobs = enqueue.add_subparsers(dest="job", required=True)
    p = enqueue_jobs.add_parser("relations", help="a relations run (needs EVALFLEET_BROKER_URL)")
    _add_relations_flags(p)
    _add_run_flags(p)
    p.set_defaults(func=cmd_enqueue)

    report = sub.add_parser("report", help="write the report of a run from the stored results")
    report.add_argument("job", choices=("relations", "editbench"))
    report.add_argument("--run", required=True, type=check_run_name)
    report.add_argument("--output", help="default: stage2_generated_results.json or editbench_report.json")
    report.set_defaults(func=cmd_report)

    status = sub.add_parser("status", help="queue depths, run progress with rate and ETA, workers "
                                           "online and the models they hold")
    status.add_argument("--run", type=check_run_name, help="only this run (default: every run)")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.add_argument("--timeout", type=float, default=1.0,
                        help="seconds to wait for the workers' answers (default: 1)")
    status.set_defaults(func=cmd_status)

    sample = sub.add_parser("sample", help="write the built-in sample inputs into a directory")
    sample.add_argument("job", choices=("relations", "editbench"))
    sample.add_argument("directory")
    sample.add_argument("--shape", choices=list(SHAPES),
                        help="editbench: the benchmark file's shape (default: category-map)")
    sample.add_argument("--image-files", action="store_true",
                        help="editbench: images as PNG files named by original_image_path")
    sample.set_defaults(func=cmd_sample)

    validate = sub.add_parser("validate", help="read an input file as a run would and list every "
                                               "problem; registers nothing (exit 0 clean, 2 problems)")
    validate.add_argument("job", choices=("editbench",))
    validate.add_argument("file")
    validate.set_defaults(func=cmd_validate)

    compare = sub.add_parser("compare", help="compare editbench runs: means with 95%% bootstrap "
                                             "intervals, paired differences against the first run")
    compare.add_argument("runs", nargs="+", metavar="RUN",
                         help="a run's editbench_report.json, or the run directory holding it; "
                              "the first is the baseline")
    compare.add_argument("--output", help="write FILE.json, and FILE.md and FILE.png beside it "
                                          "(default: print the Markdown table)")
    compare.add_argument("--allow-approximate", action="store_true",
                         help="compare runs edited with different approximate modes (FP8, step "
                              "cache) too: refused by default")
    compare.set_defaults(func=cmd_compare)
    return parser


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=check_run_name,
                   help="run name (default: derived from the inputs and settings)")
    p.add_argument(RESTART_FLAG, action="store_true",
                   help="start the run over: delete its stored results first (needed to reuse "
                        "a run name with other inputs or settings)")
    p.add_argument("--workers-per-gpu", "--workers_per_gpu", type=_positive, dest="workers_per_gpu")


def _add_relations_flags(p: argparse.ArgumentParser) -> None:
    # The original script's spellings (--stage1_result, --top_k, ...) are accepted too.
    p.add_argument("--stage1", "--stage1_result", help="recall_results_*.json of stage 1")
    p.add_argument("--input", "--input_data", help="the input image records (test_2000_images.json)")
    p.add_argument("--top-k", "--top_k", type=_positive, dest="top_k")
    p.add_argument("--batch-size", "--batch_size", type=_positive, dest="batch_size",
                   help="accepted for compatibility, unused: the decoder's batch is EVALFLEET_MAX_BATCH")
    p.add_argument("--model", "--model_path", dest="relations_model", help="hub id or local path")


def _add_editbench_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmark", help="the benchmark JSON (default: the built-in sample)")
    p.add_argument("--phase-scope", choices=PHASE_SCOPES, default="run",
                   help="drain all edits of the run before scoring (run), or edit then score "
                        "one category at a time like the original scripts (category)")
    p.add_argument("--rubric", dest="judge_rubric",
                   help="the judge's rubric: default, viescore, kris, or a folder under "
                        "<prompts dir>/rubrics/ (EVALFLEET_JUDGE_RUBRIC)")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="a LoRA on top of the editor (.safetensors file or a directory holding "
                        "one), scale 1 by default; repeat for several (replaces "
                        "EVALFLEET_EDITOR_LORAS)")


def redact(text: str, settings: Settings) -> str:
    """``text`` without the passwords of the configured Redis URLs."""
    for url in (settings.broker_url, settings.result_url):
        password = urlsplit(url).password if url else None
        if password:
            text = text.replace(password, "**")
    return text


class _Redacting(logging.Filter):
    """Takes the Redis passwords out of every log line, whoever logs it."""

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # a malformed record: the handler reports it, as without this filter
        record.msg, record.args = redact(message, self.settings), None
        return True


class _OneLineFormatter(logging.Formatter):
    """The terminal gets the message; tracebacks go to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "exc_info": None,
                                                     "exc_text": None}))


def _setup_logging(settings: Settings) -> Path | None:
    """Log to the terminal and to <work dir>/logs/producer.log; returns the file (None if unwritable)."""
    redacting = _Redacting(settings)
    console = logging.StreamHandler()
    console.setFormatter(_OneLineFormatter(LOG_FORMAT))
    handlers: list[logging.Handler] = [console]
    log_path: Path | None = (settings.work_dir / "logs" / "producer.log").resolve()
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, encoding="utf-8"))
        handlers[-1].setFormatter(logging.Formatter(LOG_FORMAT))
    except OSError:
        log_path = None
        console.setFormatter(logging.Formatter(LOG_FORMAT))  # the traceback has nowhere else to go
    for handler in handlers:
        handler.addFilter(redacting)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    return log_path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _apply_flags(args, load_settings())
    except SettingsError as exc:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        log.error("%s", exc)
        return EXIT_USAGE
    log_path = _setup_logging(settings)
    for line in ignored_variables(settings):
        log.warning("%s", line)
    try:
        if args.command == "enqueue" and not (args.stage1 and args.input):
            raise SystemExit("enqueue needs --stage1 and --input")
        return args.func(args, settings)
    except (InputFileError, SettingsError, RunMismatchError, ApproximateComparisonError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    except SystemExit as exc:
        if isinstance(exc.code, str):
            log.error("%s", exc.code)
            return EXIT_USAGE
        raise
    except (InfrastructureError, redis.exceptions.ConnectionError) as exc:
        log.error("%s", exc)
        return EXIT_INFRA
    except KeyboardInterrupt:
        log.warning("interrupted: run the same command again to resume")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or a state nothing here foresaw: not "some items failed"
        where = f"the traceback is in {log_path}" if log_path else "traceback above"
        log.error("crashed: %s: %s (%s)", type(exc).__name__, exc, where, exc_info=True)
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
