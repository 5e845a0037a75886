"""``python -m producer {run,enqueue,report,sample} {relations,editbench} ...``,
``python -m producer status [--run NAME] [--json]``, ``python -m producer validate editbench FILE``,
``python -m producer export editbench --run NAME --layout LAYOUT DIR``
and ``python -m producer compare REPORT [REPORT ...] [--output FILE]``.

Exit codes: 0 every item done; 1 the run finished but some items failed (the report
lists them); 2 bad usage, an unusable input file, a run name taken by other settings,
an unknown run (nothing registered); 3 infrastructure: Redis unreachable, or the local
workers died, or no space left on a disk it writes to; 4 crashed (a bug: one line here, the
traceback in <work dir>/logs/producer.log, status.log for status, report.log for report);
130 interrupted (SIGINT, Ctrl-C), 143 stopped by SIGTERM: the code of the first signal (a second
one stops the local workers at once); run the same command again to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Iterator

import redis
from kombu.utils.url import maybe_sanitize_url

from config import (Settings, SettingsError, ignored_variables, load_settings, to_environ,
                    validate_settings)
from producer.dispatch import celery_client
from producer.editbench.comparison import (ApproximateComparisonError, RubricComparisonError, compare_runs,
                                           comparison_files, comparison_markdown, load_run, write_comparison)
from producer.embedded import EmbeddedRedis, InfrastructureError, LocalFleet, running_server_url
from producer.interrupts import Interrupted
from producer.job import ExportError, Job, positive
from producer.jobs import JOBS
from producer.log_file import LogFile
from producer.preflight import check_free_space_for, check_output_path, check_run_settings, check_writable_dir
from producer.run_identity import RESTART_FLAG, RunMismatchError
from producer.status import build_status, format_status
from shared import storage
from shared.disk import as_disk_full, is_disk_full
from shared.errors import InputFileError, escaped
from shared.keys import check_run_name
from shared.redaction import add_settings_secrets, redact, redact_logs
from shared.run_settings import RunSettingsError
from shared.storage import StorageError, StoreUnreachable
from shared.store import (RunStore, check_redis_persisting, connect, redis_data_dir, redis_disk_full,
                          refuses_writes)

log = logging.getLogger("producer")

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_INFRA, EXIT_CRASH = 0, 1, 2, 3, 4
LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


@contextlib.contextmanager
def broker_for(settings: Settings, watch: bool = False) -> Iterator[tuple[Settings, bool]]:
    """The configured broker, or an embedded redis-server over the work directory's data.

    ``watch`` (``status``, ``report``): a run going on over that data is read through its own
    server, not waited for."""
    if settings.broker_url:
        yield settings, False
        return
    check_writable_dir(settings.work_dir / "redis", "EVALFLEET_WORK_DIR")
    running = running_server_url(settings.work_dir / "redis") if watch else None
    if running is not None:
        log.info("reading the running run's Redis on %s", maybe_sanitize_url(running))
        yield settings.replace(broker_url=running), False
        return
    with EmbeddedRedis(settings.work_dir / "redis") as server:  # redacts its password
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


def _apply_flags(args: argparse.Namespace, settings: Settings) -> Settings:
    changes = ({"workers_per_gpu": args.workers_per_gpu}
               if getattr(args, "workers_per_gpu", None) is not None else {})
    job = JOBS.get(getattr(args, "job", None))
    settings = settings.replace(**changes, **(job.flag_settings(args) if job else {}))
    validate_settings(settings)  # a flag's value is held to the setting's range
    return settings


def _preflight(args: argparse.Namespace, settings: Settings, job: Job) -> None:
    """Before anything is registered: settings and paths that would fail the run, named (exit 2)."""
    check_run_settings(settings, job)
    check_writable_dir(settings.work_dir, "EVALFLEET_WORK_DIR")
    for directory, setting in job.directories(settings):
        check_writable_dir(directory, setting)
    check_free_space_for(settings, job)
    if getattr(args, "output", None):
        check_output_path(Path(args.output))


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    job = JOBS[args.job]
    _preflight(args, settings, job)
    inputs = job.inputs(args, settings)
    with broker_for(settings) as (settings, embedded):
        client, app = connect(settings.store_url), celery_client(settings)
        run = job.register(settings, app, client, inputs, args.run, args.restart)
        store = RunStore(client, run.run_id)
        with local_fleet(args, settings, embedded, job.queues(settings), run.needs_workers) as check:
            job.drive(settings, app, run, store, _with_redis_disk(check, client), args)
        output = Path(args.output) if args.output else settings.work_dir / run.run_id / job.report_name
        report = job.write_report(store, output)
    log.info("run %s finished: %d item(s) failed; report %s", run.run_id, len(job.failures(report)), output)
    _say(job.summary(report, output))
    return EXIT_FAILED_ITEMS if job.failures(report) else EXIT_OK


def _with_redis_disk(check: Callable[[], None], client: redis.Redis) -> Callable[[], None]:
    """``check``, and whether Redis can still store results: one that cannot write its file
    refuses every write (its disk is full), and no item can end until space is freed."""
    def checks() -> None:
        check()
        check_redis_persisting(client)
    return checks


def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    job = JOBS[args.job]
    inputs = job.inputs(args, settings, sample=False)
    if not settings.broker_url:
        raise SystemExit("enqueue needs a running fleet: set EVALFLEET_BROKER_URL "
                         f"(or use `python -m producer run {job.name}` for one-command mode)")
    check_run_settings(settings, job)
    run = job.register(settings, celery_client(settings), connect(settings.store_url), inputs,
                       args.run, args.restart)
    _say(run.run_id)
    return EXIT_OK


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    if args.output:
        check_output_path(Path(args.output))
    with broker_for(settings, watch=True) as (settings, _):
        job, store = _stored_run(args, settings)
        output = Path(args.output or job.report_name)
        failed = job.failures(job.write_report(store, output))
    _say(f"{len(failed)} failed: {output}")
    return EXIT_FAILED_ITEMS if failed else EXIT_OK


def _stored_run(args: argparse.Namespace, settings: Settings) -> tuple[Job, RunStore]:
    """The job and store of the registered run ``--run`` of the command's job (SystemExit otherwise)."""
    store = RunStore(connect(settings.store_url), args.run)
    if not store.exists():
        raise SystemExit(f"run {args.run!r} is not registered in this Redis "
                         "(`python -m producer status` lists the runs)")
    job, stored = JOBS[args.job], store.meta().get("job")
    if stored != job.name:
        raise SystemExit(f"run {args.run!r} is a run of the {stored} job, not {job.name}: "
                         f"`python -m producer {args.command} {stored} --run {args.run}`")
    return job, store


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write a run's outputs where a benchmark's own scorer reads them; exit 1 when some items
    have none (listed), 2 when the export cannot be made (nothing written)."""
    directory = Path(args.directory)
    check_writable_dir(directory, "export DIR")
    with broker_for(settings, watch=True) as (settings, _):
        job, store = _stored_run(args, settings)
        try:
            text, complete = job.export(store, args.layout, directory)
        except ExportError as exc:
            raise SystemExit(str(exc)) from None
    _say(text)
    return EXIT_OK if complete else EXIT_FAILED_ITEMS


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    with broker_for(settings, watch=True) as (settings, _):
        try:
            status = build_status(settings, celery_client(settings), args.run, args.timeout)
        except LookupError as exc:
            raise SystemExit(str(exc)) from None
    if args.json:
        print(escaped(redact(json.dumps(status, indent=2, ensure_ascii=False)), keep="\n", as_json=True))
    else:
        _say(format_status(status))
    return EXIT_OK


def cmd_sample(args: argparse.Namespace, settings: Settings) -> int:
    job = JOBS[args.job]
    for other, flags in args.sample_flags.items():
        # Another job's flags are refused, not ignored.
        if other != job.name and any(getattr(args, flag.dest) != flag.default for flag in flags):
            raise SystemExit(f"{' and '.join(flag.option_strings[0] for flag in flags)} "
                             f"are for the {other} sample")
    _say(job.write_sample(Path(args.directory), args))
    return EXIT_OK


def cmd_validate(args: argparse.Namespace, settings: Settings) -> int:
    """Read the file as a run would; register nothing. Exit 0 when clean, 2 with problems."""
    text, clean = JOBS[args.job].validate(storage.as_location(args.file), settings)
    _say(text)
    return EXIT_OK if clean else EXIT_USAGE


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    """Compare runs from their reports; needs no Redis. Exit 2 when a report is unusable."""
    if args.output:
        check_output_path(Path(args.output))
        comparison_files(Path(args.output))
    comparison = compare_runs([load_run(Path(run), settings.work_dir) for run in args.runs],
                              allow_approximate=args.allow_approximate,
                              allow_rubrics=args.allow_mixed_rubrics)
    if args.output:
        markdown, chart = write_comparison(comparison, Path(args.output))
        _say(f"comparison: {args.output}\ntable: {markdown}\nchart: {chart}")
    else:
        _say(comparison_markdown(comparison), end="")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    # run and enqueue: one sub-command per job, each with its own flags only, so a flag of
    # the other job is a usage error instead of being parsed and ignored.
    run = sub.add_parser("run", help="enqueue, wait with a progress bar, write the report (one command)")
    run_jobs = run.add_subparsers(dest="job", required=True)
    for job in JOBS.values():
        p = run_jobs.add_parser(job.name, help=job.help)
        job.add_flags(p)
        _add_run_flags(p)
        p.add_argument("--output", help="report path (default: under <work dir>/<run>/)")
        p.add_argument("--gpus", default="all", help="GPUs for local workers: all, cpu, or 0,1")
        p.add_argument("--local-workers", action=argparse.BooleanOptionalAction, default=None,
                       help="start workers here (default: only with the embedded Redis)")
        p.set_defaults(func=cmd_run)

    enqueue = sub.add_parser("enqueue", help="register a run and enqueue its pending items on a running fleet")
    enqueue_jobs = enqueue.add_subparsers(dest="job", required=True)
    for job in JOBS.values():
        if job.enqueue_help:
            p = enqueue_jobs.add_parser(job.name, help=job.enqueue_help)
            job.add_flags(p)
            _add_run_flags(p)
            p.set_defaults(func=cmd_enqueue)

    report = sub.add_parser("report", help="write the report of a run from the stored results")
    report.add_argument("job", choices=list(JOBS))
    report.add_argument("--run", required=True, type=check_run_name)
    report.add_argument("--output", help="default: " + " or ".join(job.report_name for job in JOBS.values()))
    # Its own log, as status's: a report of a running run does not write into the run's.
    report.set_defaults(func=cmd_report, log_name="report.log")

    export = sub.add_parser("export", help="write a run's edits where a public benchmark's own evaluation "
                                           "script reads them (exit 1: some pairs have none, listed)")
    export.add_argument("job", choices=[job.name for job in JOBS.values() if job.export_layouts])
    export.add_argument("--run", required=True, type=check_run_name)
    export.add_argument("--layout", required=True,
                        choices=sorted({layout for job in JOBS.values() for layout in job.export_layouts}),
                        help="the benchmark whose scorer reads the folder")
    export.add_argument("directory", help="the folder its scorer reads (created if needed)")
    export.set_defaults(func=cmd_export, log_name="export.log")

    status = sub.add_parser("status", help="queue depths, run progress with rate and ETA, workers "
                                           "online and the models they hold")
    status.add_argument("--run", type=check_run_name, help="only this run (default: every run)")
    status.add_argument("--json", action="store_true", help="print JSON for scripts")
    status.add_argument("--timeout", type=float, default=1.0,
                        help="seconds to wait for the workers' answers (default: 1)")
    # Its own log: a status asked from another terminal does not write into the run's.
    status.set_defaults(func=cmd_status, log_name="status.log")

    sample = sub.add_parser("sample", help="write the built-in sample inputs into a directory")
    sample.add_argument("job", choices=list(JOBS))
    sample.add_argument("directory")
    sample.set_defaults(func=cmd_sample,
                        sample_flags={job.name: job.add_sample_flags(sample) for job in JOBS.values()})

    validate = sub.add_parser("validate", help="read an input file as a run would and list every "
                                               "problem; registers nothing (exit 0 clean, 2 problems)")
    validate.add_argument("job", choices=[job.name for job in JOBS.values() if job.validates])
    validate.add_argument("file")
    for job in JOBS.values():
        if job.validates:
            job.add_input_flags(validate)
    validate.set_defaults(func=cmd_validate)

    compare = sub.add_parser("compare", help="compare editbench runs: means with 95%% bootstrap "
                                             "intervals, paired differences against the first run")
    compare.add_argument("runs", nargs="+", metavar="RUN",
                         help="a run's editbench_report.json, the run directory holding it, or a "
                              "run's name (its report under the work directory); the first is the baseline")
    compare.add_argument("--output", help="write FILE.json, and FILE.md and FILE.png beside it "
                                          "(default: print the Markdown table)")
    compare.add_argument("--allow-approximate", action="store_true",
                         help="compare runs edited with different approximate modes (FP8, step "
                              "cache) too: refused by default")
    compare.add_argument("--allow-mixed-rubrics", action="store_true",
                         help="compare runs judged with different rubrics, scales or scorings too: "
                              "refused by default; every output then says so")
    compare.set_defaults(func=cmd_compare)
    return parser


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=check_run_name,
                   help="run name (default: derived from the inputs and settings)")
    p.add_argument(RESTART_FLAG, action="store_true",
                   help="start the run over: delete its stored results first (needed to reuse "
                        "a run name with other inputs or settings)")
    p.add_argument("--workers-per-gpu", "--workers_per_gpu", type=positive, dest="workers_per_gpu")


class _TerminalFormatter(logging.Formatter):
    """What reaches the terminal has its control characters escaped (names from input files)."""

    def format(self, record: logging.LogRecord) -> str:
        return escaped(super().format(record), keep="\n")


class _OneLineFormatter(_TerminalFormatter):
    """The terminal gets the message; tracebacks go to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(logging.makeLogRecord({**record.__dict__, "exc_info": None,
                                                     "exc_text": None}))


def _say(text: str, end: str = "\n") -> None:
    """Print a command's output, secrets redacted and control characters escaped as in the log
    (see _TerminalFormatter)."""
    print(escaped(redact(text), keep="\n"), end=end)


def _setup_logging(settings: Settings, log_name: str) -> Path | None:
    """Log to the terminal and to <work dir>/logs/<log_name>; returns the file (None if unwritable)."""
    add_settings_secrets(settings)
    console = logging.StreamHandler()
    console.setFormatter(_OneLineFormatter(LOG_FORMAT))
    handlers: list[logging.Handler] = [console]
    log_path: Path | None = (settings.work_dir / "logs" / log_name).resolve()
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(LogFile(log_path))
        handlers[-1].setFormatter(logging.Formatter(LOG_FORMAT))
    except OSError:
        log_path = None
        console.setFormatter(_TerminalFormatter(LOG_FORMAT))  # the traceback has nowhere else to go
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    redact_logs()
    return log_path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _apply_flags(args, load_settings())
    except SettingsError as exc:
        console = logging.StreamHandler()
        console.setFormatter(_TerminalFormatter(LOG_FORMAT))
        logging.basicConfig(level=logging.INFO, handlers=[console])
        log.error("%s", exc)
        return EXIT_USAGE
    log_path = _setup_logging(settings, getattr(args, "log_name", "producer.log"))
    for line in ignored_variables(settings):
        log.warning("%s", line)
    try:
        return args.func(args, settings)
    except StoreUnreachable as exc:  # infrastructure: the same command resumes once it answers
        log.error("%s", exc)
        return EXIT_INFRA
    except (InputFileError, SettingsError, RunMismatchError, RunSettingsError, ApproximateComparisonError,
            RubricComparisonError, StorageError) as exc:
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
    except Interrupted as exc:  # a signal: the first of them names the exit code
        log.warning("interrupted (%s): run the same command again to resume", exc)
        return exc.exit_code
    except Exception as exc:  # a bug or a state nothing here foresaw: not "some items failed"
        if is_disk_full(exc) or refuses_writes(exc):  # infrastructure: free space, run it again
            log.error("%s", _disk_full(exc, settings))
            return EXIT_INFRA
        where = f"the traceback is in {log_path}" if log_path else "traceback above"
        log.error("crashed: %s: %s (%s)", type(exc).__name__, exc, where, exc_info=True)
        return EXIT_CRASH


def _disk_full(exc: Exception, settings: Settings) -> Exception:
    """The one sentence for a write that found no space: which disk, and what to do."""
    if refuses_writes(exc):
        data_dir = (redis_data_dir(connect(settings.store_url)) if settings.broker_url
                    else str(settings.work_dir.resolve() / "redis"))
        return redis_disk_full(str(exc), data_dir)
    return as_disk_full(exc, f"the disk of {settings.work_dir.resolve()}")


if __name__ == "__main__":
    sys.exit(main())
