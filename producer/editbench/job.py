"""The editbench job as the producer's CLI, preflight and status see it (``producer/job.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from celery import Celery

from config import LORA_SEPARATOR, TINY_EDITORS, TINY_MODEL, Settings, SettingsError
from producer.editbench.edit_speed import edit_speed
from producer.editbench.phases import PHASE_SCOPES, PhaseController
from producer.editbench.preflight import check_editbench_settings
from producer.editbench.register import EditbenchRun, register_editbench
from producer.editbench.report import write_editbench_report
from producer.editbench.sample import ensure_editbench_sample, write_editbench_sample
from producer.editbench.validate import format_validation
from producer.job import Job
from shared.editbench.approximate import approximate_modes
from shared.editbench.data import SHAPES, prepare_benchmark
from shared.messages import EDIT_STAGE, SCORE_STAGE
from shared.store import RunStore


class EditbenchJob(Job):
    name = "editbench"
    help = "edit the benchmark's images, then score them with the judge"
    stages = (EDIT_STAGE, SCORE_STAGE)
    report_name = "editbench_report.json"
    validates = True

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--benchmark", help="the benchmark JSON (default: the built-in sample)")
        parser.add_argument("--phase-scope", choices=PHASE_SCOPES, default="run",
                            help="drain all edits of the run before scoring (run), or edit then score "
                                 "one category at a time like the seed scripts of README Baselines (category)")
        parser.add_argument("--rubric", dest="judge_rubric",
                            help="the judge's rubric: default, viescore, kris, or a folder under "
                                 "<prompts dir>/rubrics/ (EVALFLEET_JUDGE_RUBRIC)")
        parser.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                            help="a LoRA on top of the editor (.safetensors file or a directory holding "
                                 "one), scale 1 by default; repeat for several (replaces "
                                 "EVALFLEET_EDITOR_LORAS)")

    def flag_settings(self, args: argparse.Namespace) -> dict[str, Any]:
        changes = {}
        if getattr(args, "judge_rubric", None) is not None:
            changes["judge_rubric"] = args.judge_rubric
        if getattr(args, "lora", None):
            if any(LORA_SEPARATOR in lora for lora in args.lora):
                raise SettingsError(f"--lora {args.lora}: a LoRA path cannot contain {LORA_SEPARATOR!r}")
            # The flags replace EVALFLEET_EDITOR_LORAS.
            changes["editor_loras"] = LORA_SEPARATOR.join(args.lora)
        return changes

    def add_sample_flags(self, parser: argparse.ArgumentParser) -> list[argparse.Action]:
        return [parser.add_argument("--shape", choices=list(SHAPES),
                                    help="editbench: the benchmark file's shape (default: category-map)"),
                parser.add_argument("--image-files", action="store_true",
                                    help="editbench: images as PNG files named by original_image_path")]

    def models(self, settings: Settings) -> list[tuple[str, str, tuple[str, ...]]]:
        models = [("editor_model", settings.editor_model, TINY_EDITORS)]
        if settings.judge_backend != "endpoint":  # the endpoint serves the judge: no model here
            models.append(("judge_model", settings.judge_model, (TINY_MODEL,)))
        return models

    def check_settings(self, settings: Settings) -> None:
        check_editbench_settings(settings)

    def directories(self, settings: Settings) -> list[tuple[Path, str]]:
        return [(settings.artifacts, "EVALFLEET_ARTIFACT_ROOT")]

    def queues(self, settings: Settings) -> list[str]:
        return [settings.queue_edit, settings.queue_score]

    def inputs(self, args: argparse.Namespace, settings: Settings, sample: bool = True) -> list[Path]:
        if args.benchmark:
            return [Path(args.benchmark)]
        return [ensure_editbench_sample(settings.work_dir / "sample")]

    def register(self, settings: Settings, app: Celery, store_client, inputs: list[Path],
                 run_name: str | None, restart: bool) -> EditbenchRun:
        benchmark, = inputs
        return register_editbench(settings, store_client, benchmark, run_name, restart)

    def drive(self, settings: Settings, app: Celery, run: EditbenchRun, store: RunStore,
              check: Callable[[], None], args: argparse.Namespace) -> None:
        PhaseController(settings, app, run, check).drive(args.phase_scope)

    def write_report(self, store: RunStore, output: Path) -> dict[str, Any]:
        return write_editbench_report(store, output)

    def failures(self, report: dict[str, Any]) -> list[dict[str, Any]]:
        return report["failures"]

    def summary(self, report: dict[str, Any], output: Path) -> str:
        lines = [f"run {report['run']['run_id']}",
                 f"  {'category':<14}{'pairs':>6}{'scored':>7}{'failed':>7}{'mean':>8}"]
        for name, cat in report["categories"].items():
            mean = f"{cat['mean']:.3f}" if cat["mean"] is not None else "-"
            lines.append(f"  {name:<14}{cat['pairs']:>6}{cat['scored']:>7}{cat['failed']:>7}{mean:>8}")
        overall = report["overall"]
        figures = (f"mean={overall['mean']:.3f} std={overall['std']:.3f}" if overall["mean"] is not None
                   else "mean=- std=-")
        lines.append(f"  overall: n={overall['n']} {figures}; swaps: {len(report['swaps'])}")
        if len(report["criteria"]) > 1:
            lines += [f"  {name}: n={crit['n']} mean={crit['mean']} std={crit['std']} failed={crit['failed']}"
                      for name, crit in report["criteria"].items()]
        lines += [f"  failed {failure['key']} ({failure['stage']}): {failure['reason']}"
                  for failure in report["failures"]]
        lines.append(f"report: {output}\nchart: {report['chart']}")
        return "\n".join(lines)

    def status(self, store: RunStore, meta: dict[str, Any], stages: list[dict[str, Any]],
               now: float) -> dict[str, Any]:
        going = any(s["done"] + s["failed"] < s["total"] for s in stages)
        return {"edit_speed": edit_speed(store, now if going else None),
                "approximate": approximate_modes(meta)}

    def write_sample(self, directory: Path, args: argparse.Namespace) -> str:
        benchmark = write_editbench_sample(directory, args.shape or "category-map", args.image_files)
        return f"--benchmark {benchmark}"

    def validate(self, path: Path, settings: Settings) -> tuple[str, bool]:
        prepared = prepare_benchmark(path, settings.data_root)
        return format_validation(path, prepared), not prepared.failures
