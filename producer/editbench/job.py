"""The editbench job as the producer's CLI, preflight and status see it (``producer/job.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from celery import Celery

from config import FIELD_SEPARATOR, LORA_SEPARATOR, TINY_EDITORS, TINY_MODEL, Settings, SettingsError
from producer.editbench.edit_layouts import EXPORT_LAYOUTS, LAYOUTS
from producer.editbench.edit_speed import edit_speed
from producer.editbench.export import export_edits, format_export
from producer.editbench.external_edits import editor_summary
from producer.editbench.phases import PHASE_SCOPES, PhaseController
from producer.editbench.preflight import check_editbench_settings
from producer.editbench.register import EditbenchRun, benchmark_reading, register_editbench
from producer.editbench.report import write_editbench_report
from producer.editbench.sample import ensure_editbench_sample, write_editbench_sample
from producer.editbench.validate import format_validation
from producer.job import Job
from shared import storage
from shared.editbench.approximate import approximate_modes
from shared.editbench.data import SHAPES, prepare_benchmark
from shared.editbench.formats import FORMATS

from shared.messages import EDIT_STAGE, SCORE_STAGE
from shared.store import RunStore


class EditbenchJob(Job):
    name = "editbench"
    help = "edit the benchmark's images, then score them with the judge"
    stages = (EDIT_STAGE, SCORE_STAGE)
    report_name = "editbench_report.json"
    validates = True
    export_layouts = EXPORT_LAYOUTS

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--benchmark", help="the benchmark: a file or a benchmark's folder "
                                                "(default: the built-in sample)")
        self.add_input_flags(parser)
        parser.add_argument("--phase-scope", choices=PHASE_SCOPES, default="run",
                            help="drain all edits of the run before scoring (run), or edit then score "
                                 "one category at a time like the seed scripts of README Baselines (category)")
        parser.add_argument("--rubric", dest="judge_rubric",
                            help="the judge's rubric: default, viescore, kris, or a folder under "
                                 "<prompts dir>/rubrics/ (EVALFLEET_JUDGE_RUBRIC)")
        parser.add_argument("--edits", dest="edits_dir", metavar="DIR",
                            help="judge the edits in DIR, made elsewhere, instead of editing; each pair's "
                                 "edit where --layout names it (EVALFLEET_EDITS_DIR)")
        parser.add_argument("--layout", dest="edits_layout", choices=list(LAYOUTS),
                            help="how the edits of --edits are named (default: the benchmark's own "
                                 "scorer's for gedit, kris, imgedit, rise; else flat: DIR/<pair id>.png)")
        parser.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                            help="a LoRA on top of the editor (.safetensors file or a directory holding "
                                 "one), scale 1 by default; repeat for several (replaces "
                                 "EVALFLEET_EDITOR_LORAS)")

    def add_input_flags(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--format", dest="benchmark_format", choices=list(FORMATS),
                            help="the benchmark's layout (default: detected; EVALFLEET_BENCHMARK_FORMAT)")
        parser.add_argument("--field", action="append", metavar="NAME=SOURCE",
                            help="read evalfleet's NAME (category, pair_id, edit_instruction, "
                                 "original_description, original_image_path) from the records' field "
                                 "SOURCE; repeat for several (replaces EVALFLEET_BENCHMARK_FIELDS)")
        parser.add_argument("--images", dest="benchmark_images", metavar="DIR",
                            help="the folder the records' relative image paths are under (default: "
                                 "beside the benchmark file; EVALFLEET_BENCHMARK_IMAGES)")

    def flag_settings(self, args: argparse.Namespace) -> dict[str, Any]:
        changes = {}
        for name in ("benchmark_format", "benchmark_images", "edits_dir", "edits_layout"):
            if getattr(args, name, None) is not None:
                changes[name] = getattr(args, name)
        if getattr(args, "field", None):
            changes["benchmark_fields"] = FIELD_SEPARATOR.join(args.field)
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
        # Edits made elsewhere need no editor.
        models = [] if settings.edits_dir else [("editor_model", settings.editor_model, TINY_EDITORS)]
        if settings.judge_backend != "endpoint":  # the endpoint serves the judge: no model here
            models.append(("judge_model", settings.judge_model, (TINY_MODEL,)))
        return models

    def check_settings(self, settings: Settings) -> None:
        check_editbench_settings(settings)

    def directories(self, settings: Settings) -> list[tuple[Path, str]]:
        # An object store's room is not a disk's: it is not checked.
        return [] if settings.artifacts_in_store else [(settings.artifacts, "EVALFLEET_ARTIFACT_ROOT")]

    def queues(self, settings: Settings) -> list[str]:
        return [settings.queue_edit, settings.queue_score]

    def inputs(self, args: argparse.Namespace, settings: Settings, sample: bool = True) -> list[str | Path]:
        if args.benchmark:  # a file, a folder, or an object's URL
            return [storage.as_location(args.benchmark)]
        return [ensure_editbench_sample(settings.work_dir / "sample")]

    def register(self, settings: Settings, app: Celery, store_client, inputs: list[str | Path],
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
        lines = [f"run {report['run']['run_id']} (editor: {editor_summary(report['run'])})",
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

    def export(self, store: RunStore, layout: str, directory: Path) -> tuple[str, bool]:
        export = export_edits(store, layout, directory)
        return format_export(export), not export.not_exported

    def validate(self, path: str | Path, settings: Settings) -> tuple[str, bool]:
        prepared = prepare_benchmark(path, settings.data_root, benchmark_reading(settings))
        return format_validation(path, prepared), not prepared.failures

