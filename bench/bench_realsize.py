"""Editbench at real size: per-edit seconds (eager, compiled cold, compiled warm), the
30B-A3B judge per item (grouped_mm against eager experts), both models resident on one GPU,
the seed's model moves, and the makespan model for the 270-pair benchmark.

    python3 -m bench.bench_realsize editor --compile on --cache /tmp/ind --steps-list 2,2,50 --out editor_cold.json
    python3 -m bench.bench_realsize editor --compile on --cache /tmp/ind --steps-list 2,2 --out editor_warm.json
    python3 -m bench.bench_realsize judge --out judge.json      # also the eager edit, both resident
    python3 -m bench.bench_realsize model --cold editor_cold.json --warm editor_warm.json \\
        --judge judge.json --out makespan.json
    (add --tiny to the first three for a CPU smoke test with the tiny models; its figures mean nothing)

Models are random bf16 weights built straight on the GPU, nothing saved: the full pipeline
(60-layer transformer, 28-layer Qwen2.5-VL text encoder, VAE: 57.7 GB) and the judge
(62 GB) do not both fit the GPU host's 64 GB disk. Edits go through the product's editor path:
``workers.editing.editor.Editor`` with ``workers.editing.compile.compile_editor_transformer`` and the
settings ``EVALFLEET_EDITOR_COMPILE`` / ``EVALFLEET_INDUCTOR_CACHE_DIR``; scores through
``workers.judging.judge.Judge``.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.harness import pinned_bandwidth_gbs
from config import Settings
from shared.editbench.prompt_manager import PromptManager
from shared.jsonio import write_json_atomic
from workers.editing.editor import Editor
from workers.editing.compile import compile_editor_transformer
from workers.judging.judge import Judge, JudgeItem

# Instructions of different lengths: each edit's prompt has another token count, as in a run.
INSTRUCTIONS = [
    "Make the sky orange as at sunset.",
    "Replace the red car in the foreground with a blue bicycle leaning against the wall.",
    "Remove the people, keep the building and the trees exactly as they are, and add light rain.",
    "Turn it into winter.",
]
PAIRS, CATEGORIES = 270, 5


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _image(size: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _device_info() -> dict[str, Any]:
    import diffusers
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    return info


def build_editor(tiny: bool, device: torch.device):
    """(pipeline, seconds to build): the full-size random pipeline on the GPU, or the tiny one."""
    start = time.perf_counter()
    if tiny:
        from workers.models.loading import load_image_edit_pipeline
        from workers.models.tiny import build_tiny_qwen_image_edit

        directory = build_tiny_qwen_image_edit(Path(tempfile.mkdtemp()) / "tiny-edit")
        pipeline = load_image_edit_pipeline(str(directory), revision="", dtype=torch.float32,
                                            device=device)
    else:
        from bench.real_models import random_qwen_image_edit

        pipeline = random_qwen_image_edit(device=str(device))
    _sync(device)
    return pipeline, time.perf_counter() - start


def _editor(pipeline, steps: int, size: int) -> Editor:
    """The product's Editor with ``steps``, ``size`` and true CFG 4.0 (Qwen-Image-Edit's own)."""
    settings = Editor.family_of(pipeline).settings(steps=steps, size=size, guidance=4.0,
                                                   negative_prompt=" ", tiny=False)
    return Editor(pipeline, settings)


def _bytes(modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules
               for t in list(m.parameters()) + list(m.buffers()))


def run_editor(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu" if args.tiny else "cuda")
    pipeline, build_s = build_editor(args.tiny, device)
    settings = Settings(editor_compile=args.compile, inductor_cache_dir=args.cache or "")
    cache_files_before = _count_files(settings.inductor_cache) if args.compile == "on" else None
    compiled = compile_editor_transformer(pipeline, settings, device)
    image = _image(args.size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # Edits of the given step counts, one after the other: "2,2,50" times the first edit
    # (with the compile), a second short one (without), and a full one.
    steps_list = [int(n) for n in args.steps_list.split(",")] if args.steps_list else [args.steps] * 2
    edits = []
    for i, steps in enumerate(steps_list):
        editor = _editor(pipeline, steps, args.size)
        start = time.perf_counter()
        editor.edit(image, INSTRUCTIONS[i % len(INSTRUCTIONS)], seed=i)
        _sync(device)
        edits.append(round(time.perf_counter() - start, 3))
        print(f"edit {i} ({steps} steps): {edits[-1]:.2f} s", flush=True)
    result = {
        "part": "editor", "tiny": args.tiny, "compile": args.compile, "compiled": compiled,
        "inductor_cache": str(settings.inductor_cache) if compiled else None,
        "inductor_cache_files_before": cache_files_before,
        "inductor_cache_files_after": _count_files(settings.inductor_cache) if compiled else None,
        "steps": steps_list, "size": args.size, "true_cfg_scale": 4.0,
        "editor_bytes": _bytes(Editor.modules(editor).values()),
        "build_s": round(build_s, 2), "edit_s": edits, "dynamo_graphs": _dynamo_graphs(),
        "peak_allocated_gb": _peak(device), **_device_info(),
    }
    return result


def _count_files(directory: Path) -> int:
    return sum(1 for p in Path(directory).rglob("*") if p.is_file()) if Path(directory).exists() else 0


def _dynamo_graphs() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {k: int(v) for k, v in counters["stats"].items()}


def _peak(device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    return {"allocated": round(torch.cuda.max_memory_allocated() / 1e9, 2),
            "reserved": round(torch.cuda.max_memory_reserved() / 1e9, 2)}


def build_judge(tiny: bool, device: torch.device):
    """(processor, model): Qwen3-VL-30B-A3B's architecture with random bf16 weights on the GPU
    (loaded with the product's experts choice), or the tiny MoE through load_vlm on the CPU."""
    from workers.models.loading import FAST_EXPERTS, load_vlm

    if tiny:
        from workers.models.tiny import build_tiny_qwen3_vl_moe

        directory = build_tiny_qwen3_vl_moe(Path(tempfile.mkdtemp()) / "tiny-moe")
        return load_vlm(str(directory), revision="", dtype=torch.float32, device=device)
    from bench.real_models import random_qwen3_vl

    processor, model = random_qwen3_vl("30b-a3b")
    model.set_experts_implementation(FAST_EXPERTS)
    return processor, model


def _judge_items(n: int, size: int) -> list[JudgeItem]:
    prompts = PromptManager(Settings().prompts)
    prompt = prompts.get_full_prompt("物理", "A street with a red car in front of a wall.",
                                     INSTRUCTIONS[1])
    return [JudgeItem(original_image=_image(size, i), edited_image=_image(size, 100 + i),
                      system_prompt=prompt["system_prompt"], user_prompt=prompt["user_prompt"])
            for i in range(n)]


def time_judge(processor, model, device: torch.device, size: int, reps: int) -> dict[str, Any]:
    """Seconds per item for each experts implementation and batch size (median of ``reps``)."""
    from workers.models.loading import experts_implementation

    out: dict[str, Any] = {"loaded_with": experts_implementation(model)}
    for implementation in ("grouped_mm", "eager"):
        model.set_experts_implementation(implementation)
        for batch in (1, 4):
            judge = Judge(processor, model, batch_size=batch)
            items = _judge_items(batch, size)
            judge.score(items)  # warm-up
            times = []
            for _ in range(reps):
                _sync(device)
                start = time.perf_counter()
                judge.score(items)
                _sync(device)
                times.append(time.perf_counter() - start)
            per_item = float(np.median(times)) / batch
            out[f"{implementation}_batch{batch}_s_per_item"] = round(per_item, 4)
            print(f"judge {implementation} batch {batch}: {per_item:.3f} s/item", flush=True)
    model.set_experts_implementation("grouped_mm")
    return out


def _timed_move(module, target: str, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    module.to(target)
    _sync(device)
    return round(time.perf_counter() - start, 2)


def run_judge(args: argparse.Namespace) -> dict[str, Any]:
    """Both models resident, one edit and one judge batch (peak memory), judge timings, moves."""
    device = torch.device("cpu" if args.tiny else "cuda")
    pipeline, _ = build_editor(args.tiny, device)
    processor, model = build_judge(args.tiny, device)
    editor_bytes = _bytes([pipeline.transformer, pipeline.vae, pipeline.text_encoder])
    judge_bytes = _bytes([model])
    # A short first edit takes the one-time CUDA initialisations out of the timed one.
    _editor(pipeline, 2, args.size).edit(
        _image(args.size), INSTRUCTIONS[-1], seed=99)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    editor = _editor(pipeline, args.steps, args.size)
    start = time.perf_counter()
    editor.edit(_image(args.size), INSTRUCTIONS[0], seed=0)
    _sync(device)
    resident_edit_s = time.perf_counter() - start
    print(f"eager edit, both resident: {resident_edit_s:.2f} s", flush=True)
    Judge(processor, model, batch_size=4).score(_judge_items(4, args.size))
    resident = {"editor_gb": round(editor_bytes / 1e9, 2), "judge_gb": round(judge_bytes / 1e9, 2),
                "edit_steps": args.steps, "edit_size": args.size, "eager_edit_s": round(resident_edit_s, 2),
                "peak": _peak(device), "swaps": 0}
    print(f"both resident: {resident}", flush=True)
    result = {"part": "judge", "tiny": args.tiny, "resident": resident, "judge_image_size": args.size,
              "moves": {}, **_device_info()}
    write_json_atomic(Path(args.out), result)  # what is measured so far, should a limit stop us
    result["judge"] = time_judge(processor, model, device, args.size, args.reps)
    write_json_atomic(Path(args.out), result)
    moves = result["moves"]
    if device.type == "cuda":
        moves["pinned_gbs"] = {way: round(gbs, 1) for way, gbs in pinned_bandwidth_gbs().items()}
        # The seed's moves, one model on the host at a time (host memory is 128 GiB).
        for name, module in (("judge", model), ("editor", pipeline)):
            for target in ("cpu", "cuda"):
                moves[f"{name}_to_{target}_s"] = _timed_move(module, target, device)
                write_json_atomic(Path(args.out), result)
        print(f"moves: {moves}", flush=True)
    return result


def makespan_model(args: argparse.Namespace) -> dict[str, Any]:
    """The 270-pair benchmark on one GPU, from the measured parts.

    Both designs load each model from disk once (the same cost, left out). Seed: eager edits,
    the judge one pair at a time, per category the editor and the judge each moved to the GPU
    and back with ``.to()``. Fleet: compiled edits (the compile once per host; a second
    process or a rerun pays the warm compile), the judge 4 pairs a batch with grouped_mm,
    both models resident on one H200 (no swap).
    """
    cold, warm, judge = (json.loads(Path(p).read_text()) for p in (args.cold, args.warm, args.judge))
    # The eager edit: its own run if given, else the one made with both models resident.
    eager_edit = (min(json.loads(Path(args.eager).read_text())["edit_s"]) if args.eager
                  else judge["resident"]["eager_edit_s"])
    compiled_edit = _full_edit(cold)
    compile_cold, compile_warm = _compile_seconds(cold), _compile_seconds(warm)
    j, m = judge["judge"], judge["moves"]
    moves_per_category = (m["editor_to_cuda_s"] + m["editor_to_cpu_s"]
                          + m["judge_to_cuda_s"] + m["judge_to_cpu_s"])
    seed = {"edits_s": PAIRS * eager_edit,
            "scores_s": PAIRS * j["grouped_mm_batch1_s_per_item"],
            "moves_s": CATEGORIES * moves_per_category, "swaps": 2 * CATEGORIES - 1}
    fleet = {"edits_s": PAIRS * compiled_edit, "compile_s": compile_cold,
             "scores_s": PAIRS * j["grouped_mm_batch4_s_per_item"], "moves_s": 0.0, "swaps": 0}
    fleet_eager = {**fleet, "edits_s": PAIRS * eager_edit, "compile_s": 0.0}
    for design in (seed, fleet, fleet_eager):
        design["makespan_s"] = round(sum(v for k, v in design.items() if k.endswith("_s")), 1)
    return {
        "pairs": PAIRS, "categories": CATEGORIES,
        "per_edit_s": {"eager": eager_edit, "compiled": compiled_edit},
        "compile_s": {"cold": round(compile_cold, 1), "warm": round(compile_warm, 1)},
        "compile_pays_back_after_edits": round(compile_cold / (eager_edit - compiled_edit), 1),
        "judge_s_per_item": j, "seed_moves_per_category_s": round(moves_per_category, 2),
        "seed": seed, "fleet": fleet, "fleet_without_compile": fleet_eager,
        "ratio_seed_over_fleet": round(seed["makespan_s"] / fleet["makespan_s"], 3),
        "ratio_without_compile": round(seed["makespan_s"] / fleet_eager["makespan_s"], 3),
    }


def _full_edit(run: dict[str, Any]) -> float:
    """Seconds of the run's fastest edit with the most steps (a full edit, compiled already)."""
    most = max(run["steps"])
    return min(t for t, n in zip(run["edit_s"][1:], run["steps"][1:]) if n == most)


def _compile_seconds(run: dict[str, Any]) -> float:
    """The first edit less the second of the same steps: what compiling (or loading it) cost."""
    assert run["steps"][0] == run["steps"][1], "the first two edits must have the same steps"
    return run["edit_s"][0] - run["edit_s"][1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parts = parser.add_subparsers(dest="part", required=True)
    editor = parts.add_parser("editor", help="seconds per edit through the product's Editor")
    editor.add_argument("--compile", choices=("on", "off"), default="off")
    editor.add_argument("--cache", default="", help="inductor cache directory (EVALFLEET_INDUCTOR_CACHE_DIR)")
    editor.add_argument("--steps-list", default="",
                        help="steps of each edit, e.g. 2,2,50 (default: two edits of --steps)")
    judge = parts.add_parser("judge", help="both models resident, judge per item, seed moves")
    judge.add_argument("--reps", type=int, default=3)
    for sub in (editor, judge):
        sub.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke test)")
        sub.add_argument("--steps", type=int, default=None)
        sub.add_argument("--size", type=int, default=None)
        sub.add_argument("--out", required=True)
    model = parts.add_parser("model", help="the 270-pair makespan from the measured parts")
    for name in ("cold", "warm", "judge", "out"):
        model.add_argument(f"--{name}", required=True)
    model.add_argument("--eager", default="", help="an editor --compile off result (default: "
                       "the judge part's eager edit, both models resident)")
    args = parser.parse_args()
    if args.part != "model":
        args.steps = args.steps or (2 if args.tiny else 50)
        args.size = args.size or (128 if args.tiny else 1024)
    return args


def main() -> None:
    args = parse_args()
    run = {"editor": run_editor, "judge": run_judge, "model": makespan_model}[args.part]
    result = run(args)
    write_json_atomic(Path(args.out), result)
    print(json.dumps(result, ensure_ascii=False, indent=1), flush=True)


if __name__ == "__main__":
    main()
