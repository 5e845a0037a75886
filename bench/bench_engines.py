"""The relations engines on real-run shapes, side by side in one process: slot against paged.

``slot`` is bench/slot_decoder.py (the baseline, the product's decoder before the paged
engine), ``paged`` is workers/relations/engine/ (the product's decoder).

    python3 -m bench.bench_engines --out engines.json [--shape realrun] [--moe]
        [--slot-batches 256] [--paged-batches 256,512] [--paged-ahead-batches 1024]
        [--profile-dir DIR] [--tiny]

``paged-ahead`` is the paged engine planning each step while the last one runs
(``PagedEngine(plan_ahead=True)``, the product's default); ``paged`` plans each step after
the last one's tokens are back.

Qwen3-VL-8B architecture (Qwen3-VL-30B-A3B with ``--moe``), random bf16 weights built on the
GPU, 1280x960 images (~1230 prefix tokens), relation prompts as the product renders them
(~90 suffix tokens), greedy. Random weights never emit eos, so each prompt's length is its
token budget, drawn from the shape's distribution:

- ``realrun``: 40 images x 100 prompts; lengths log-normal, median 140, sigma 0.6, rounded,
  clamped to 1..512, drawn with torch.Generator().manual_seed(0) in image-major order (mean
  ~168, ~670k generated tokens). The workload of the relations engine issues.
- ``short``: 200 images x 20 prompts; log-normal median 60, sigma 0.6, cap 256, seed 1: more
  images, fewer prompts each, shorter answers (prefixes weigh more).
- ``fixed``: 8 images x 128 prompts, every prompt 128 tokens: no length spread.

Each engine runs each batch once on the first 4 images (compiles and captures), then the whole
workload, timed. Reported per run: generated tok/s, occupancy (rows that picked a token over
batch x steps), where the seconds went (the engines' phase clocks: CUDA events), peak memory,
and the compute floor: matmul FLOPs of every token through the text layers (active experts
only), lm_head for sampled tokens, attention scores over each token's context, the vision
tower, all at the matmul rate measured in the same call. ``--profile-dir``: one paged step
at the best paged batch, mid-run (``--profile-at`` steps in), kernels grouped. ``--deadline-s``:
a run still going then stops and reports the rate of the tokens picked so far (marked partial).
``--tiny``: the tiny model on the CPU in float32, a smoke test of this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.bench_decoder import _kernel_group, empty_cache, image, prompts, rendered, synchronize
from bench.harness import hbm_bandwidth_gbs
from bench.real_models import random_qwen3_vl
from bench.slot_decoder import SlotDecoder
from shared.jsonio import write_json_atomic
from workers.relations.engine import model_runner
from workers.relations.engine.engine import PagedEngine

WARM_IMAGES = 4


class Deadline(Exception):
    """A run stopped at its deadline: its throughput is that of the steps it ran."""


@dataclass(frozen=True)
class Shape:
    images: int
    prompts: int  # per image
    median: float
    sigma: float
    cap: int
    seed: int

    def budgets(self) -> list[list[int]]:
        """Each prompt's token budget, image by image."""
        count = self.images * self.prompts
        if self.sigma == 0:
            return [[int(self.median)] * self.prompts for _ in range(self.images)]
        generator = torch.Generator().manual_seed(self.seed)
        draws = torch.empty(count).log_normal_(mean=math.log(self.median), std=self.sigma,
                                               generator=generator)
        flat = draws.round().clamp(1, self.cap).long().tolist()
        return [flat[i * self.prompts:(i + 1) * self.prompts] for i in range(self.images)]


SHAPES = {
    "realrun": Shape(images=40, prompts=100, median=140, sigma=0.6, cap=512, seed=0),
    "short": Shape(images=200, prompts=20, median=60, sigma=0.6, cap=256, seed=1),
    "fixed": Shape(images=8, prompts=128, median=128, sigma=0, cap=128, seed=0),
    "tiny": Shape(images=3, prompts=6, median=6, sigma=0.6, cap=12, seed=0),
}


def workload(processor, shape: Shape, tiny: bool):
    size = (192, 144) if tiny else None
    images = [image(i) if size is None else image(i).resize(size) for i in range(shape.images)]
    texts = [rendered(processor, prompts(shape.prompts, seed=i * shape.prompts))
             for i in range(shape.images)]
    return images, texts, shape.budgets()


def matmul_tflops() -> float:
    """bf16 matrix-product rate of this card (8192^3, random data, median of 10)."""
    if not torch.cuda.is_available():
        return 0.0
    a, b = (torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * 8192**3 / sorted(times)[5] / 1e12


def weight_read_ms(model, gbps: float) -> float | None:
    """Milliseconds to read the text model's weights (and lm_head) once at ``gbps``: what a
    decode step of few rows cannot go under."""
    language = model.model.language_model
    params = sum(p.numel() * p.element_size() for p in language.parameters())
    params += sum(p.numel() * p.element_size() for p in model.lm_head.parameters())
    return round(params / (gbps * 1e9) * 1000, 2) if gbps else None


def flops(model, engine: PagedEngine, images, texts, budgets) -> dict:
    """Matmul FLOPs the workload cannot avoid (see the module's docstring)."""
    text = model.config.text_config
    hidden, heads, kv, dim = (text.hidden_size, text.num_attention_heads,
                              text.num_key_value_heads, text.head_dim)
    attention = hidden * dim * (2 * heads + 2 * kv)
    if getattr(text, "num_experts", 0):
        mlp = 3 * hidden * text.moe_intermediate_size * text.num_experts_per_tok
        mlp += hidden * text.num_experts
    else:
        mlp = 3 * hidden * text.intermediate_size
    per_token = 2 * text.num_hidden_layers * (attention + mlp)
    per_context = 4 * text.num_hidden_layers * heads * dim  # scores and weighted values
    vision = model.model.visual
    vision_params = sum(p.numel() for p in vision.parameters())
    total, prefix_total, vision_total = 0.0, 0, 0.0
    for img, group, group_budgets in zip(images, texts, budgets):
        prefix_text, suffixes = engine.adapter.split(group)
        prefix = engine.adapter.prefix_tokens(img, prefix_text) or 0
        prefix_total += prefix
        vision_total += 2 * vision_params * prefix * 4  # ~4 patches per merged token
        total += per_token * prefix + per_context * prefix * prefix / 2
        for suffix, budget in zip(suffixes, group_budgets):
            length = len(suffix) + budget
            total += per_token * length + 2 * hidden * text.vocab_size * budget
            total += per_context * (prefix * length + length * length / 2)
    return {"text_flop": total, "vision_flop": vision_total, "prefix_tokens": prefix_total,
            "flop_per_prompt": (total + vision_total) / sum(map(len, budgets))}


@contextlib.contextmanager
def profiled_step(at: int, directory: Path, name: str, out: dict):
    """Profile the paged runner's ``at``-th step: its kernels, and its wall time (from a
    synchronized start to a synchronized end, the profiler's host overhead included)."""
    original = model_runner.ModelRunner.run
    count = [0]

    def run(self, plan):
        count[0] += 1
        if count[0] != at:
            return original(self, plan)
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(ProfilerActivity.CUDA)
        synchronize()
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            tokens = original(self, plan)
            synchronize()
            out["wall_ms"] = round((time.perf_counter() - started) * 1000, 2)
        out["decode_rows"], out["prefill_tokens"] = len(plan.decode), sum(
            chunk.count for chunk in plan.prefill)
        out["groups_ms"] = kernel_groups(prof)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"profile_{name}.txt").write_text(
            prof.key_averages().table(sort_by="cuda_time_total" if torch.cuda.is_available()
                                      else "cpu_time_total", row_limit=40))
        return tokens

    model_runner.ModelRunner.run = run
    try:
        yield out
    finally:
        model_runner.ModelRunner.run = original


def kernel_groups(prof) -> dict:
    groups: dict[str, float] = {}
    cuda = torch.cuda.is_available()
    for event in prof.key_averages():
        if cuda and event.device_type.name != "CUDA":
            continue
        microseconds = event.self_device_time_total if cuda else event.self_cpu_time_total
        if microseconds > 0:
            group = _kernel_group(event.key)
            groups[group] = groups.get(group, 0) + microseconds
    out = {group: round(us / 1000, 3) for group, us in sorted(groups.items(), key=lambda g: -g[1])}
    out["kernels_ms"] = round(sum(groups.values()) / 1000, 3)
    return out


def run_engine(name: str, engine, images, texts, budgets, batch: int, floor: dict,
               profile: dict | None = None, deadline_s: float = 0.0) -> dict:
    ends = [math.inf]

    def stop_at_deadline(*_):
        if time.perf_counter() > ends[0]:
            raise Deadline

    def call(some_images, some_texts, some_budgets):
        return engine.generate(some_images, some_texts, max_batch=batch,
                               max_new_tokens=some_budgets, temperature=0.0, seed=0,
                               on_done=stop_at_deadline)

    result: dict = {"engine": name, "batch": batch}
    try:
        started = time.perf_counter()
        call(images[:WARM_IMAGES], texts[:WARM_IMAGES], budgets[:WARM_IMAGES])
        result["warm_s"] = round(time.perf_counter() - started, 2)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        synchronize()
        started = time.perf_counter()
        ends[0] = started + (deadline_s or math.inf)
        with (profiled_step(profile["at"], Path(profile["dir"]), f"paged_{batch}", profile["out"])
              if profile else contextlib.nullcontext()):
            out = call(images, texts, budgets)
        synchronize()
        seconds = time.perf_counter() - started
    except Deadline:
        seconds = time.perf_counter() - started
        stats = engine.stats
        result.update(partial=True, seconds=round(seconds, 2), generated=stats.live_row_steps,
                      tok_s=round(stats.live_row_steps / seconds), steps=stats.steps,
                      occupancy=round(stats.live_row_steps / max(1, stats.steps * batch), 3))
        result.update(_engine_extras(stats))
        print(result, flush=True)
        return result
    except torch.cuda.OutOfMemoryError as exc:
        result["error"] = f"out of memory: {str(exc)[:200]}"
        print(result, flush=True)
        return result
    except Exception as exc:  # report it; the other engines' runs still go
        logging.exception("%s at batch %d failed", name, batch)
        result["error"] = repr(exc)[:500]
        return result
    finally:
        engine.release()
        empty_cache()
    generated = sum(len(row) for group in out for row in group)
    if generated != sum(map(sum, budgets)):
        raise RuntimeError(f"{name} generated {generated} tokens, not the budgets' "
                           f"{sum(map(sum, budgets))} (random weights emitted eos?)")
    stats = engine.stats
    result.update(seconds=round(seconds, 2), generated=generated,
                  tok_s=round(generated / seconds), occupancy=round(stats.occupancy, 3),
                  steps=stats.steps, rows=stats.rows,
                  phases_s={k: round(v, 2) for k, v in stats.phases.items()},
                  floor_fraction=round(floor["seconds"] / seconds, 3) if floor["seconds"] else None)
    decode_steps = stats.steps - getattr(stats, "mixed_steps", 0)
    if stats.phases.get("decode") and decode_steps:
        # Steps that only decoded running rows (the slot decoder's steps all do).
        result["decode_step_ms"] = round(1000 * stats.phases["decode"] / decode_steps, 2)
    if torch.cuda.is_available():
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    result.update(_engine_extras(stats))
    print(result, flush=True)
    return result


def _engine_extras(stats) -> dict:
    """The paged engine's own counters (how it ran: graphs or not, rows it held, its pool)."""
    names = ("mixed_steps", "tokens", "preemptions", "blocks", "attention", "peak_rows",
             "capture_seconds")
    return {name: getattr(stats, name) for name in names if hasattr(stats, name)}


def bench(args) -> dict:
    kind = "tiny" if args.tiny else ("30b-a3b" if args.moe else "8b")
    started = time.perf_counter()
    processor, model = random_qwen3_vl(kind)
    shape = SHAPES["tiny" if args.tiny else args.shape]
    images, texts, budgets = workload(processor, shape, args.tiny)
    paged = PagedEngine(processor, model, plan_ahead=False)
    slot = SlotDecoder(processor, model)
    ahead = PagedEngine(processor, model, plan_ahead=True)
    rate = matmul_tflops()
    bandwidth = hbm_bandwidth_gbs() if torch.cuda.is_available() else 0.0
    work = flops(model, paged, images, texts, budgets)
    floor_s = (work["text_flop"] + work["vision_flop"]) / (rate * 1e12) if rate else 0.0
    generated = sum(map(sum, budgets))
    floor = {"matmul_tflops": round(rate, 1), "seconds": round(floor_s, 2),
             "tok_s": round(generated / floor_s) if floor_s else None,
             "tflop_per_prompt": round(work["flop_per_prompt"] / 1e12, 2),
             "prefix_tokens": work["prefix_tokens"], "copy_gbps": round(bandwidth),
             "weight_read_ms": weight_read_ms(model, bandwidth)}
    result = {"model": kind, "shape": args.shape if not args.tiny else "tiny",
              "shape_def": shape.__dict__, "prompts": shape.images * shape.prompts,
              "generated_tokens": generated, "build_s": round(time.perf_counter() - started, 1),
              "floor": floor, "runs": []}
    print({k: v for k, v in result.items() if k != "runs"}, flush=True)
    profile_batch = (max(int(b) for b in args.paged_batches.split(","))
                     if args.profile_dir and args.paged_batches else None)
    with torch.inference_mode():
        for name, engine, batches in (("paged", paged, args.paged_batches),
                                      ("paged-ahead", ahead, args.paged_ahead_batches),
                                      ("slot", slot, args.slot_batches)):
            for batch in [int(b) for b in batches.split(",") if b]:
                profile = None
                if name == "paged" and batch == profile_batch:
                    profile = {"dir": args.profile_dir, "out": {}, "at": args.profile_at}
                run = run_engine(name, engine, images, texts, budgets, batch, floor, profile,
                                 args.deadline_s)
                if profile:
                    run["profile"] = profile["out"]
                    print("profile", profile["out"], flush=True)
                result["runs"].append(run)
    best = {name: max((r["tok_s"] for r in result["runs"] if r["engine"] == name and "tok_s" in r),
                      default=None) for name in ("slot", "paged", "paged-ahead")}
    result["best_tok_s"] = best
    if best["slot"] and best["paged"]:
        result["paged_over_slot"] = round(best["paged"] / best["slot"], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", default="bench_engines.json")
    parser.add_argument("--shape", choices=[s for s in SHAPES if s != "tiny"], default="realrun")
    parser.add_argument("--moe", action="store_true", help="Qwen3-VL-30B-A3B architecture")
    parser.add_argument("--slot-batches", default="256")
    parser.add_argument("--paged-batches", default="256,512")
    parser.add_argument("--paged-ahead-batches", default="",
                        help="the paged engine planning each step while the last one runs")
    parser.add_argument("--profile-dir", default="")
    parser.add_argument("--profile-at", type=int, default=400,
                        help="the paged step to profile (the batch is full by then)")
    parser.add_argument("--deadline-s", type=float, default=0.0)
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU: a smoke test")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {"device": device, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              **bench(args)}
    write_json_atomic(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("device", "model", "shape", "floor", "best_tok_s")}),
          flush=True)


if __name__ == "__main__":
    main()
