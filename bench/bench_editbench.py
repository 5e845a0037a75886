"""Editbench makespan: the fleet (real Redis, real Celery worker, the product's phase controller)
against the seed-style two-phase loop, side by side in one call, same GPU, models and data.

    python3 -m bench.bench_editbench --work /tmp/bench --out bench_editbench.json
    python3 -m bench.bench_editbench --tiny --work /tmp/bench-tiny --out bench_editbench_tiny.json

Models (random bf16 weights created on the GPU, saved, then loaded by the product's own
``from_pretrained`` path): the judge is Qwen3-VL-8B-Instruct's configuration (17.5 GB); the
editor is Qwen-Image-Edit's configuration with the transformer and text-encoder layer counts
scaled (default 16/60 and 12/28 layers, ~20 GB; ``--editor-layers 60 --text-encoder-layers 28``
is the full 57.7 GB pipeline, which needs ~80 GB of free disk beside the judge).

Memory budget: the fleet worker's ``EVALFLEET_MEMORY_BUDGET_GB`` defaults to a value that holds
either model alone but not both (the larger + half the smaller), so the fleet makes its one
swap, as a full-size editor + judge must on an 80 GB card. ``--budget-gb 0`` uses the product's
default (90% of the GPU's memory), under which the scaled models fit together and nothing swaps.

Makespan includes model loading for both: the fleet from the first enqueue (the worker has
booted, idle, no model loaded) to the report written; the seed from loading both models off
disk to its report written. Order: models built (or reused from ``--work``), the fleet, then
the fleet is stopped (its GPU memory freed) and the seed runs in this process.

``--tiny``: the project's tiny models on the CPU, for a smoke test; its ratio means nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.real_models import (EDITOR_LAYERS_DEFAULT, EDITOR_LAYERS_FULL, TEXT_ENCODER_LAYERS_DEFAULT,
                               TEXT_ENCODER_LAYERS_FULL, build_random_qwen3_vl_8b,
                               build_random_qwen_image_edit, checkpoint_stats)
from bench.harness import embedded_store, local_fleet, quiet_progress_bars, wait_for_workers
from bench.seed_editbench import SeedSettings, pixel_digest, run_seed_editbench
from config import Settings
from producer.editbench.phases import PhaseController
from producer.editbench.register import register_editbench
from producer.editbench.report import write_editbench_report
from producer.editbench.sample import SAMPLE
from shared.jsonio import write_json_atomic
from shared.messages import EDIT_STAGE, SCORE_STAGE
from shared.store import RunStore

GIB = 1 << 30
RUN_NAME = "bench-editbench"
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Models:
    editor_dir: Path
    judge_dir: Path
    device: str  # "cuda" or "cpu"
    dtype: torch.dtype
    description: dict[str, Any]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/bench", help="models, data and fleet state (models are reused)")
    p.add_argument("--out", default="bench_editbench.json")
    p.add_argument("--categories", type=int, default=5, help="at most 5 (the reference categories)")
    p.add_argument("--pairs", type=int, default=None, help="pairs per category (default 2; tiny 1)")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default 4; tiny 2)")
    p.add_argument("--size", type=int, default=None, help="edit size in pixels (default 512; tiny 128)")
    p.add_argument("--editor-layers", type=int, default=EDITOR_LAYERS_DEFAULT,
                   help=f"transformer layers of the editor (real: {EDITOR_LAYERS_FULL})")
    p.add_argument("--text-encoder-layers", type=int, default=TEXT_ENCODER_LAYERS_DEFAULT,
                   help=f"text layers of the editor's Qwen2.5-VL encoder (real: {TEXT_ENCODER_LAYERS_FULL})")
    p.add_argument("--budget-gb", type=float, default=None,
                   help="the fleet worker's EVALFLEET_MEMORY_BUDGET_GB; default: the larger model + "
                        "half the smaller (forces one swap); 0: the product's default")
    p.add_argument("--judge-batch-size", type=int, default=4, help="fleet judge batch (product default 4)")
    p.add_argument("--seed-judge-batch-size", type=int, default=1, help="the seed scores pair by pair")
    p.add_argument("--true-cfg-scale", type=float, default=4.0, help="product default 4.0 (two passes per step)")
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU: a smoke test")
    args = p.parse_args()
    if not 1 <= args.categories <= len(SAMPLE):
        p.error(f"--categories must be 1..{len(SAMPLE)}")
    args.pairs = args.pairs or (1 if args.tiny else 2)
    args.steps = args.steps or (2 if args.tiny else 4)
    args.size = args.size or (128 if args.tiny else 512)
    return args


# --- models ------------------------------------------------------------------------------

def prepare_models(args: argparse.Namespace, work: Path) -> Models:
    if args.tiny:
        return _tiny_models(work)
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible: run with --tiny for the CPU smoke test")
    start = time.perf_counter()
    judge_dir = build_random_qwen3_vl_8b(work / "qwen3-vl-8b-random")
    editor_dir = build_random_qwen_image_edit(
        work / f"qwen-image-edit-random-t{args.editor_layers}-te{args.text_encoder_layers}",
        args.editor_layers, args.text_encoder_layers)
    build_s = time.perf_counter() - start
    description = _describe(editor_dir, judge_dir, build_s)
    description["editor"]["scale"] = {
        "transformer_layers": args.editor_layers, "transformer_layers_real": EDITOR_LAYERS_FULL,
        "text_encoder_layers": args.text_encoder_layers,
        "text_encoder_layers_real": TEXT_ENCODER_LAYERS_FULL,
        "full_size": args.editor_layers == EDITOR_LAYERS_FULL
        and args.text_encoder_layers == TEXT_ENCODER_LAYERS_FULL,
        "note": "Qwen-Image-Edit's configuration (diffusers defaults for QwenImageTransformer2DModel "
                "and AutoencoderKLQwenImage; Qwen2.5-VL-7B text encoder) with these layer counts; "
                "full size: --editor-layers 60 --text-encoder-layers 28 (57.7 GB; 75 GB of disk "
                "with the judge, more than a 64 GB disk holds)",
    }
    description["judge"]["config"] = "Qwen3-VL-8B-Instruct (full size)"
    return Models(editor_dir, judge_dir, "cuda", torch.bfloat16, description)


def _tiny_models(work: Path) -> Models:
    from workers.models.loading import QWEN3_VL, EDITOR, resolve_model_path

    start = time.perf_counter()
    editor_dir = Path(resolve_model_path("tiny", work / "models", kind=EDITOR))
    judge_dir = Path(resolve_model_path("tiny", work / "models", kind=QWEN3_VL))
    description = _describe(editor_dir, judge_dir, time.perf_counter() - start)
    description["editor"]["config"] = "the project's tiny Qwen-Image-Edit (workers/models/tiny/qwen_image_edit.py)"
    description["judge"]["config"] = "the project's tiny Qwen3-VL (workers/models/tiny/qwen3_vl.py)"
    return Models(editor_dir, judge_dir, "cpu", torch.float32, description)


def _describe(editor_dir: Path, judge_dir: Path, build_s: float) -> dict[str, Any]:
    editor, judge = checkpoint_stats(editor_dir), checkpoint_stats(judge_dir)
    return {"build_or_reuse_s": round(build_s, 1),
            "editor": {"dir": str(editor_dir), "components": editor,
                       "parameters": _total(editor, "parameters"), "bytes": _total(editor, "bytes")},
            "judge": {"dir": str(judge_dir), "parameters": _total(judge, "parameters"),
                      "bytes": _total(judge, "bytes")}}


def _total(stats: dict[str, dict[str, int]], key: str) -> int:
    return sum(component[key] for component in stats.values())


def budget_gib(args: argparse.Namespace, models: Models) -> tuple[float, str]:
    """The fleet worker's budget: holds either model alone, not both (unless --budget-gb says so)."""
    if args.budget_gb is not None:
        return args.budget_gb, "--budget-gb" if args.budget_gb > 0 else "product default (0.9 x device memory)"
    sizes = sorted((models.description["editor"]["bytes"], models.description["judge"]["bytes"]))
    return (sizes[1] + sizes[0] / 2) / GIB, "larger model + half the smaller: one swap"


def expected_fleet_swaps(budget: float, models: Models) -> int:
    """1 when editor + judge exceed the worker's budget (the swap this benchmark is about), else 0."""
    both = models.description["editor"]["bytes"] + models.description["judge"]["bytes"]
    if budget > 0:
        return int(both > budget * GIB)
    if models.device != "cuda":
        return 0  # the product's default on a CPU is 90% of host memory
    return int(both > 0.9 * torch.cuda.get_device_properties(0).total_memory)


# --- data --------------------------------------------------------------------------------

def write_benchmark(path: Path, categories: int, pairs: int, image_size: int) -> Path:
    """5 reference categories x ``pairs`` drawn images (deterministic bytes), the sample's texts."""
    import base64
    import io

    from PIL import ImageDraw

    benchmark = {}
    for c, (category, texts) in enumerate(list(SAMPLE.items())[:categories]):
        records = []
        for i in range(pairs):
            description, instruction, shape, colour = texts[i % len(texts)]
            img = Image.new("RGB", (image_size, image_size), "beige")
            draw = ImageDraw.Draw(img)
            offset = (c * 7 + i * 13) % (image_size // 4)
            box = (image_size // 5 + offset, image_size // 5, image_size * 4 // 5, image_size * 4 // 5 - offset)
            getattr(draw, shape)(box, fill=colour, outline="black", width=3)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            records.append({"pair_id": f"{category}-{i + 1}", "original_description": description,
                            "edit_instruction": instruction,
                            "original_image_b64": base64.b64encode(buf.getvalue()).decode("ascii")})
        benchmark[category] = records
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(benchmark, ensure_ascii=False), encoding="utf-8")
    return path


# --- the fleet ---------------------------------------------------------------------------

class GpuMemorySampler:
    """Device-wide used GPU memory, sampled from this process (the worker is another process)."""

    def __init__(self, enabled: bool, interval: float = 0.25):
        self.enabled, self.interval = enabled, interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak_bytes = max(self.peak_bytes, total - free)
            self._stop.wait(self.interval)

    def __enter__(self) -> "GpuMemorySampler":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()


def fleet_settings(args: argparse.Namespace, models: Models, work: Path, budget: float) -> Settings:
    return Settings(work_dir=work, editor_model=str(models.editor_dir), judge_model=str(models.judge_dir),
                    edit_steps=args.steps, edit_size=args.size, edit_guidance=args.true_cfg_scale,
                    judge_batch_size=args.judge_batch_size, memory_budget_gb=budget,
                    device="cpu" if args.tiny else "auto", poll_interval_seconds=0.05)


def run_fleet(settings: Settings, benchmark: Path, gpus: str, sample_gpu: bool) -> dict[str, Any]:
    """Enqueue -> phase controller -> report, on a booted idle worker; the makespan and the report."""
    shutil.rmtree(settings.work_dir, ignore_errors=True)  # a fresh run: no resume from an earlier call
    with embedded_store(settings) as (settings, client):
        with local_fleet(settings, client, [settings.queue_edit, settings.queue_score], gpus,
                         name_prefix="bench-") as fleet:
            boot = time.perf_counter()
            wait_for_workers(fleet, timeout=180)
            boot_s = time.perf_counter() - boot
            with GpuMemorySampler(sample_gpu) as sampler:
                start = time.perf_counter()
                run = register_editbench(settings, client, benchmark, RUN_NAME)
                registered = time.perf_counter()
                PhaseController(settings, fleet.app, run, fleet.check).drive("run")
                driven = time.perf_counter()
                report = write_editbench_report(run.store, settings.work_dir / "editbench_report.json")
                makespan = time.perf_counter() - start
        # The worker has exited here (warm shutdown): its GPU memory is released.
        store = RunStore(client, RUN_NAME)
        edits, scores = store.done(EDIT_STAGE), store.done(SCORE_STAGE)
        stats = {**store.stats(EDIT_STAGE), **store.stats(SCORE_STAGE)}
    return {
        "makespan_s": round(makespan, 3), "worker_boot_s_not_timed": round(boot_s, 2),
        "register_s": round(registered - start, 3), "phases_s": report["phases"],
        "report_s": round(start + makespan - driven, 3),
        **edit_times(edits), "chart": report["chart"],
        "swaps": len(report["swaps"]), "swap_records": report["swaps"],
        "swap_s_includes_judge_load": round(sum(r["seconds"] for r in report["swaps"]), 3),
        "edit_seconds_per_pair": {k: v["seconds"] for k, v in edits.items()},
        "failures": report["failures"], "worker_stats": stats,
        "peak_gpu_used_gb_device_wide": round(sampler.peak_bytes / 1e9, 2) if sample_gpu else None,
        "scores": {k: v["score"] for k, v in scores.items()},
        "edited_pixel_digests": {k: pixel_digest(Image.open(v["edited_path"])) for k, v in edits.items()},
        "edited_paths": {k: v["edited_path"] for k, v in edits.items()},
        "worker_log": str(fleet.log_path),
    }


def edit_times(edits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The first edit's seconds include loading the editor; the median of the others is one edit."""
    ordered = [v["seconds"] for v in sorted(edits.values(), key=lambda v: v["started_at"])]
    rest = ordered[1:]
    return {"first_edit_s_includes_editor_load": ordered[0] if ordered else None,
            "edit_s_median_after_first": round(float(np.median(rest)), 3) if rest else None}


def wait_for_gpu_release(timeout: float = 60) -> float:
    """Wait until the fleet's memory is back: the seed must not share the GPU with it."""
    start = time.perf_counter()
    free, total = torch.cuda.mem_get_info()
    while free < 0.9 * total and time.perf_counter() - start < timeout:
        time.sleep(0.5)
        free, total = torch.cuda.mem_get_info()
    return round((total - free) / 1e9, 2)


# --- the seed ----------------------------------------------------------------------------

def run_seed(args: argparse.Namespace, models: Models, settings: Settings, benchmark: Path,
             work: Path) -> dict[str, Any]:
    s = SeedSettings(device=models.device, dtype=models.dtype, steps=args.steps, size=args.size,
                     true_cfg_scale=args.true_cfg_scale, negative_prompt=settings.edit_negative_prompt,
                     seed=settings.seed, prompts_dir=settings.prompts,
                     judge_batch_size=args.seed_judge_batch_size)
    if models.device == "cuda":
        # The CUDA context is made before the timer (the fleet worker's is inside its makespan):
        # this favours the seed, by about a second.
        torch.cuda.init()
        torch.zeros(1, device="cuda")
        torch.cuda.reset_peak_memory_stats()
    return run_seed_editbench(benchmark, str(models.editor_dir), str(models.judge_dir), s,
                              work / "seed_report.json")


# --- comparison and output -------------------------------------------------------------------

def compare(fleet: dict[str, Any], seed: dict[str, Any]) -> dict[str, Any]:
    keys = sorted(set(fleet["scores"]) & set(seed["scores"]))
    diffs = [abs(fleet["scores"][k] - seed["scores"][k]) for k in keys]
    same_edits = sum(fleet["edited_pixel_digests"].get(k) == d for k, d in seed["edited_pixel_digests"].items())
    return {"pairs_compared": len(keys),
            "identical_edited_images": f"{same_edits} / {len(seed['edited_pixel_digests'])}",
            "score_max_abs_diff": round(max(diffs), 4) if diffs else None,
            "score_note": "the fleet scores in batches of --judge-batch-size (left padding), the "
                          "seed pair by pair: rounding may differ in the last bits (more in bf16); "
                          "edits use the same seed per pair"}


def device_info(models: Models) -> dict[str, Any]:
    import diffusers
    import transformers

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "host": platform.node()}
    if models.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(), device_memory_gb=round(props.total_memory / 1e9, 1))
    else:
        info.update(device=f"cpu ({platform.processor() or platform.machine()})")
    return info


def summary(fleet: dict[str, Any], seed: dict[str, Any], tiny: bool) -> dict[str, Any]:
    ratio = seed["makespan_s"] / fleet["makespan_s"]
    out = {"fleet_makespan_s": fleet["makespan_s"], "seed_makespan_s": seed["makespan_s"],
           "ratio_seed_over_fleet": round(ratio, 2), "fleet_swaps": fleet["swaps"],
           "seed_swaps": seed["swaps"], "seed_moves": seed["moves"], "target_ratio": TARGET_RATIO,
           "fleet_failures": len(fleet["failures"])}
    if tiny:
        out["ratio_meaningful"] = False
        out["ratio_note"] = ("tiny models on a CPU: moves are no-ops and the models are tiny, so "
                             "this ratio says nothing about the GPU; this run only checks that "
                             "both sides run end to end")
    else:
        out["ratio_meaningful"] = True
        out["target_met"] = ratio >= TARGET_RATIO
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_progress_bars()
    args = parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    models = prepare_models(args, work)
    budget, budget_rule = budget_gib(args, models)
    benchmark = write_benchmark(work / "data" / "editbench_bench.json", args.categories, args.pairs, args.size)
    result: dict[str, Any] = {
        **device_info(models), "models": models.description,
        "workload": {"categories": args.categories, "pairs_per_category": args.pairs,
                     "pairs": args.categories * args.pairs, "steps": args.steps,
                     "size": args.size, "input_images": f"{args.size}x{args.size} PNG, drawn",
                     "true_cfg_scale": args.true_cfg_scale, "fleet_judge_batch_size": args.judge_batch_size,
                     "seed_judge_batch_size": args.seed_judge_batch_size, "benchmark": str(benchmark)},
        "fleet_memory_budget_gib": round(budget, 4), "fleet_memory_budget_rule": budget_rule,
        "fleet_expected_swaps": expected_fleet_swaps(budget, models),
        "timing": "makespan includes loading both models from disk for both designs (page cache "
                  "warm after the build). Fleet: first enqueue -> report written; the worker has "
                  "booted (not timed) but imports torch/diffusers and makes its CUDA context "
                  "lazily, inside the makespan. Seed: loading both models -> report written; its "
                  "imports and CUDA context come before the timer (favours the seed). The fleet "
                  "runs first and is stopped (its GPU memory freed), then the seed runs in this "
                  "process.",
        "tiny": args.tiny,
    }
    write_json_atomic(out, result)  # after each stage: a run cut short keeps what it measured
    settings = fleet_settings(args, models, work / "fleet", budget)
    result["fleet"] = run_fleet(settings, benchmark, "cpu" if args.tiny else "0", models.device == "cuda")
    print(f"fleet: {result['fleet']['makespan_s']:.1f}s, {result['fleet']['swaps']} swap(s)", flush=True)
    write_json_atomic(out, result)
    if models.device == "cuda":
        result["gpu_used_gb_before_seed"] = wait_for_gpu_release()
    result["seed"] = run_seed(args, models, settings, benchmark, work)
    print(f"seed: {result['seed']['makespan_s']:.1f}s, {result['seed']['swaps']} swaps, "
          f"{result['seed']['moves']} moves", flush=True)
    result["comparison"] = compare(result["fleet"], result["seed"])
    result["summary"] = summary(result["fleet"], result["seed"], args.tiny)
    result["wall_s_total"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out, result)
    print(json.dumps(result["summary"], ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
