"""The relations decoders at real size, side by side in one process: static against slots.

``static`` is the earliest decoder, kept as a baseline in bench/static_decoder.py; ``slots``
is the one that replaced it (bench/slot_decoder.py, itself now the baseline of the product's
paged engine: bench/bench_engines.py).

    python3 -m bench.bench_decoder --out bench_decoder.json [--moe yes] [--profile-dir DIR]

Qwen3-VL-8B architecture (and Qwen3-VL-30B-A3B with ``--moe yes``), random bf16 weights built
on the GPU, 1280x960 images (~1200 prefix tokens), relation prompts as the product renders
them, greedy. Random weights never emit eos: lengths are token budgets.

- **step**: for each decoder and batch B, B prompts of one image decoded for 32 and for 96
  new tokens (second run of each, the first captures the graphs); the step is the slope
  (t96 - t32) / 64, so prefill drops out. Decode tok/s = B / step. Against the bound
  B x HBM bandwidth / weight bytes (measured bandwidth).
- **across images**: 32 images x 16 prompts, 64 new tokens: the static decoder decodes one
  image at a time (its batch is the image's 16 prompts), the slot decoder all at once.
- **variable lengths**: 1024 prompts over 8 images, each stopping at a length drawn from a
  log-normal (median 120, sigma 0.6, seed 0, capped at 512) standing in for eos: one call
  (slots refilled as rows end) against calls of one batch each (every row waits for the
  batch's longest), same decoder, same lengths.
- **memory**: KV bytes per row and the largest batch that fits an H200 and an 80 GB card.
- **profile**: one eager decode step at batch 256 of each decoder, kernels grouped.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from bench.harness import hbm_bandwidth_gbs
from bench.real_models import random_qwen3_vl
from bench.slot_decoder import SlotDecoder, kv_bytes_per_token, slot_shape
from bench.static_decoder import ImagePromptDecoder
from shared.jsonio import write_json_atomic
from shared.relations.prompt import build_relation_prompt
from workers.relations.decoding import length_bucket, split_after_image
from workers.relations.generator import render_prompt

NAMES = ["man", "horse", "hat", "fence", "tree", "dog", "car", "kite", "bench", "cup"]
PREDICATES = ["on", "near", "holding", "wearing", "behind", "in front of", "riding", "under"]
IMAGE_SIZE = (1280, 960)
# Row columns in use when a step is profiled: a ~90-token suffix and ~60 generated tokens.
PROFILE_COLUMNS = 150


def prompts(count: int, seed: int = 0) -> list[str]:
    """Relation prompts as the worker builds them (~80-100 tokens each)."""
    out = []
    for i in range(count):
        j = i + seed
        subject = {"class_name": NAMES[j % 10], "bbox": [10 + j % 300, 20, 400 + j % 200, 500]}
        obj = {"class_name": NAMES[(j * 7 + 3) % 10], "bbox": [600, 100 + j % 200, 1200, 900]}
        out.append(build_relation_prompt(subject, obj, PREDICATES[j % 8], *IMAGE_SIZE))
    return out


def image(index: int = 0) -> Image.Image:
    base = Image.radial_gradient("L") if index % 2 else Image.linear_gradient("L")
    return base.rotate(index * 13).resize(IMAGE_SIZE).convert("RGB")


def rendered(processor, texts: list[str]) -> list[str]:
    return [render_prompt(processor, text) for text in texts]


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def empty_cache() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def timed(run) -> tuple[float, object]:
    synchronize()
    start = time.perf_counter()
    out = run()
    synchronize()
    return time.perf_counter() - start, out


def run_static(decoder: ImagePromptDecoder, images, texts, batch: int, tokens: int):
    return [decoder.generate(img, group, batch_size=batch, max_new_tokens=tokens, temperature=0.0,
                             seed=0) for img, group in zip(images, texts)]


def run_slots(decoder: SlotDecoder, images, texts, batch: int, tokens):
    return decoder.generate(images, texts, max_batch=batch, max_new_tokens=tokens,
                            temperature=0.0, seed=0)


def step_table(name: str, decoder, run, batches: list[int], processor, bound_per_row: float) -> list[dict]:
    rows = []
    for batch in batches:
        texts = [rendered(processor, prompts(batch))]
        times = {}
        try:
            for tokens in (32, 96):
                run(decoder, [image()], texts, batch, tokens)  # allocate and capture
                times[tokens], _ = timed(lambda: run(decoder, [image()], texts, batch, tokens))
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{name} batch {batch}: out of memory ({exc})", flush=True)
            rows.append({"decoder": name, "batch": batch, "error": "out of memory"})
            break
        finally:
            decoder.release()
            empty_cache()
        step = (times[96] - times[32]) / 64
        row = {"decoder": name, "batch": batch, "t32_s": round(times[32], 3),
               "t96_s": round(times[96], 3), "step_ms": round(step * 1000, 2),
               "decode_tok_s": round(batch / step), "bound_tok_s": round(batch * bound_per_row),
               "fraction_of_bound": round(batch / step / (batch * bound_per_row), 3)}
        print(row, flush=True)
        rows.append(row)
    return rows


def across_images(processor, static, slots, count: int = 32) -> dict:
    images = [image(i) for i in range(count)]
    texts = [rendered(processor, prompts(16, seed=i)) for i in range(count)]
    tokens = sum(16 * 64 for _ in images)
    out = {}
    for name, decoder, run in (("static", static, run_static), ("slots", slots, run_slots)):
        run(decoder, images[:2], texts[:2], 512, 64)  # capture
        seconds, _ = timed(lambda: run(decoder, images, texts, 512, 64))
        out[name] = {"seconds": round(seconds, 3), "tok_s": round(tokens / seconds)}
        decoder.release()
        empty_cache()
    out["speedup"] = round(out["static"]["seconds"] / out["slots"]["seconds"], 2)
    print("across images", out, flush=True)
    return out


def variable_lengths(processor, slots: SlotDecoder, batch: int, count: int = 1024,
                     per_image: int = 128) -> dict:
    generator = torch.Generator().manual_seed(0)
    draws = torch.empty(count).log_normal_(mean=math.log(120), std=0.6, generator=generator)
    lengths = draws.round().clamp(1, 512).long().tolist()
    images = [image(i) for i in range(count // per_image)]
    texts = [rendered(processor, prompts(per_image, seed=i)) for i in range(len(images))]
    budgets = [lengths[i * per_image:(i + 1) * per_image] for i in range(len(images))]
    per_call = batch // per_image
    run_slots(slots, images[:per_call], texts[:per_call], batch, budgets[:per_call])  # capture

    def static_batches() -> int:
        steps = 0
        for start in range(0, len(images), per_call):
            end = start + per_call
            run_slots(slots, images[start:end], texts[start:end], batch, budgets[start:end])
            steps += slots.stats.steps
        return steps

    static_s, static_steps = timed(static_batches)
    with prefill_timers(slots) as prefill:
        continuous_s, _ = timed(lambda: run_slots(slots, images, texts, batch, budgets))
    occupancy, continuous_steps = slots.stats.occupancy, slots.stats.steps
    slots.release()
    empty_cache()
    tokens = sum(lengths)
    out = {"prompts": count, "batch": batch, "tokens": tokens,
           "median_length": sorted(lengths)[count // 2], "max_length": max(lengths),
           "static_batches_s": round(static_s, 3), "continuous_s": round(continuous_s, 3),
           "static_tok_s": round(tokens / static_s), "continuous_tok_s": round(tokens / continuous_s),
           "gain": round(static_s / continuous_s, 2), "continuous_occupancy": round(occupancy, 3),
           "static_steps": static_steps, "continuous_steps": continuous_steps,
           "continuous_prefill": prefill}
    print("variable lengths", out, flush=True)
    return out


@contextlib.contextmanager
def prefill_timers(slots: SlotDecoder):
    """Seconds (synchronized) and calls of the decoder's prefix and row prefills while inside."""
    times: dict[str, float] = {}
    originals = {name: getattr(slots, name) for name in ("prefill_prefixes", "prefill_rows")}

    def timer(name, original):
        def run(*args, **kwargs):
            synchronize()
            start = time.perf_counter()
            out = original(*args, **kwargs)
            synchronize()
            times[f"{name}_s"] = round(times.get(f"{name}_s", 0) + time.perf_counter() - start, 3)
            times[f"{name}_calls"] = times.get(f"{name}_calls", 0) + 1
            return out
        return run

    for name, original in originals.items():
        setattr(slots, name, timer(name, original))
    try:
        yield times
    finally:
        for name in originals:
            delattr(slots, name)  # back to the class's methods


@contextlib.contextmanager
def decode_layouts(slots: SlotDecoder):
    """The layouts (caches and step inputs) the decoder's generate calls decode in while inside,
    as it hands each to its public ``prefill_prefixes``."""
    layouts = []
    original = slots.prefill_prefixes

    def keep(layout, *args, **kwargs):
        layouts.append(layout)
        return original(layout, *args, **kwargs)

    slots.prefill_prefixes = keep
    try:
        yield layouts
    finally:
        del slots.prefill_prefixes  # back to the class's method


@contextlib.contextmanager
def eager_steps(slots: SlotDecoder):
    """Decode steps run eagerly, not as a graph replay, so the profiler sees their kernels (a
    step's two increments of its columns and positions included)."""
    graphs, slots.use_cuda_graph = slots.use_cuda_graph, False
    try:
        yield
    finally:
        slots.use_cuda_graph = graphs


def profile_slot_step(name: str, processor, slots: SlotDecoder, batch: int, window: int | None,
                      directory: Path) -> dict:
    """One decode step of B prompts of one image, eager, its columns at PROFILE_COLUMNS (each
    profiled step moves them on by one); ``window``: the rows' attention window, None for all."""
    texts = [rendered(processor, prompts(batch))]
    with decode_layouts(slots) as layouts:
        slots.generate([image()], texts, max_batch=batch, max_new_tokens=2, temperature=0.0, seed=0)
    layout = layouts[-1]
    with torch.inference_mode(), eager_steps(slots):
        layout.caches.columns.fill_(PROFILE_COLUMNS)
        width = layout.caches.row_length if window is None else window
        out = profile_step(name, lambda: slots.step(layout, width), directory)
    slots.release()
    empty_cache()
    return out


def image_inputs(processor, slots: SlotDecoder, count: int) -> dict:
    """What an image's prefix costs before decoding: the processor on the CPU (and on the GPU
    where the image processor takes a device), and the prefix prefill, 8 images a pass."""
    images = [image(i) for i in range(count)]
    texts = [rendered(processor, prompts(1, seed=i)) for i in range(count)]
    prefix = texts[0][0][: texts[0][0].index("<|vision_end|>") + len("<|vision_end|>")]
    out = {"images": count, "threads": torch.get_num_threads()}
    seconds, _ = timed(lambda: [processor(text=[prefix], images=[img], return_tensors="pt")
                                for img in images])
    out["processor_cpu_ms_per_image"] = round(seconds / count * 1000, 1)
    for threads in (4, 8):
        with ThreadPoolExecutor(threads) as pool:
            seconds, _ = timed(lambda: list(pool.map(
                lambda img: processor(text=[prefix], images=[img], return_tensors="pt"), images)))
        out[f"processor_cpu_ms_per_image_{threads}_threads"] = round(seconds / count * 1000, 1)
    if torch.cuda.is_available():
        try:
            seconds, _ = timed(lambda: [processor(text=[prefix], images=[img], return_tensors="pt",
                                                  device="cuda") for img in images])
            out["processor_gpu_ms_per_image"] = round(seconds / count * 1000, 1)
        except (TypeError, ValueError) as exc:
            out["processor_gpu_ms_per_image"] = f"not supported: {exc}"
    run_slots(slots, images[:2], texts[:2], 64, 1)  # warm up
    out["prefix_pass_8_images"] = prefix_pass(processor, slots, images[:8], prefix)
    with prefill_timers(slots) as prefill:
        seconds, _ = timed(lambda: run_slots(slots, images, texts, 64, 1))
    out["one_token_per_image_s"] = round(seconds, 3)
    out["prefill"] = prefill
    slots.release()
    empty_cache()
    print("image inputs", out, flush=True)
    return out


def prefix_pass(processor, slots: SlotDecoder, images: list, prefix: str) -> dict:
    """One prefix pass of 8 images as the decoder runs it (the model's own forward), and the
    vision tower alone on the same pixels: where an image's prefill time goes. The images are
    of one size, so the prefixes are of one length and the processor's batch needs no padding."""
    model = slots.model
    batch = processor(text=[prefix] * len(images), images=images, return_tensors="pt").to(model.device)
    positions, _ = model.model.get_rope_index(
        batch["input_ids"], batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
        attention_mask=batch["attention_mask"])

    def whole():
        model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)

    def vision():
        model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])

    out = {"tokens": int(batch["input_ids"].numel()), "patches": int(batch["pixel_values"].shape[0])}
    for name, run in (("whole", whole), ("vision", vision)):
        run()
        seconds = min(timed(run)[0] for _ in range(3))
        out[f"{name}_s"] = round(seconds, 3)
    return out


def agreement(processor, model, static, slots) -> dict:
    """Greedy rows of the fast path (flash, compiled layers, graphs) against the plain path
    (matmul attention, transformers' arithmetic, eager) and the static decoder: bf16 rounding
    flips argmaxes of random weights sooner or later, so report where rows part."""
    texts = [rendered(processor, prompts(64))]
    plain = SlotDecoder(processor, model, use_cuda_graph=False, compile_layers=False)
    plain.flash = False
    fast_rows = run_slots(slots, [image()], texts, 64, 32)[0]
    plain_rows = run_slots(plain, [image()], texts, 64, 32)[0]
    static_rows = run_static(static, [image()], texts, 64, 32)[0]
    plain.release()
    slots.release()
    static.release()
    empty_cache()

    def parting(rows_a, rows_b) -> list[int]:
        return sorted(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
                      for a, b in zip(rows_a, rows_b) if a != b)

    out = {"rows": len(fast_rows),
           "fast_vs_plain_identical": sum(a == b for a, b in zip(fast_rows, plain_rows)),
           "fast_vs_plain_parting_steps": parting(fast_rows, plain_rows),
           "fast_vs_static_identical": sum(a == b for a, b in zip(fast_rows, static_rows)),
           "plain_vs_static_identical": sum(a == b for a, b in zip(plain_rows, static_rows))}
    print("agreement", out, flush=True)
    return out


def memory(model, weight_bytes: int) -> dict:
    per_token = kv_bytes_per_token(model)
    prefix, suffix, new = 1230, 100, 512
    static_row = length_bucket(prefix + suffix + new - 1) * per_token
    slot_row = length_bucket(suffix + new + 8) * per_token
    prefix_bytes = length_bucket(prefix) * per_token
    out = {"kv_bytes_per_token": per_token, "static_bytes_per_row": static_row,
           "slots_bytes_per_row": slot_row, "slots_bytes_per_image": prefix_bytes}
    for card, gib in (("h200", 139.8), ("80gb", 79.2)):
        room = (gib * 2**30 * 0.9 - weight_bytes) * 0.9  # the worker's budget and cache share
        static_batch = 1 << int(math.log2(max(1, room // static_row)))
        images, rows = slot_shape([100] * 64, 4096, bytes_per_image=prefix_bytes,
                                  bytes_per_row=slot_row, cache_bytes=int(room))
        out[card] = {"cache_room_gib": round(room / 2**30, 1), "static_max_batch": static_batch,
                     "slots_max_batch": rows, "slots_layout": [images, rows]}
    print("memory", out, flush=True)
    return out


def profile_step(name: str, step, directory: Path) -> dict:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(2):
        step()
    synchronize()
    activity = ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU
    with profile(activities=[activity]) as prof:
        for _ in range(3):
            step()
        synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"profile_{name}.txt").write_text(table)
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        microseconds = (event.device_time_total if torch.cuda.is_available()
                        else event.self_cpu_time_total) / 3
        if microseconds <= 0:
            continue
        groups[_kernel_group(event.key)] = groups.get(_kernel_group(event.key), 0) + microseconds
    out = {group: round(us / 1000, 3) for group, us in sorted(groups.items(), key=lambda g: -g[1])}
    out["total_ms"] = round(sum(groups.values()) / 1000, 3)
    print(f"profile {name}", out, flush=True)
    return out


def _kernel_group(name: str) -> str:
    lowered = name.lower()
    for group, marks in (("attention: rows' own keys", ("_paged_kernel",)),
                         ("attention: image prefixes", ("_prefix_kernel",)),
                         ("attention", ("flash", "attention", "fmha", "efficient")),
                         ("gemm", ("gemm", "nvjet", "cutlass", "sm90", "cublas", "matmul", "mm")),
                         ("softmax/exp", ("softmax", "exp")), ("reduce", ("reduce", "amax", "sum")),
                         ("copy/index", ("copy", "index", "scatter", "gather", "cat"))):
        if any(mark in lowered for mark in marks):
            return group
    return "elementwise/other"


def prefill_profile(processor, slots, directory: Path, count: int = 256) -> dict:
    """``count`` prompts of one image to their first token: one prefix pass and the rows'
    suffix prefills (chunks of PREFILL_TOKENS), no decode step. Kernel time by group against
    the wall time of the call (the difference is the GPU waiting for the host)."""
    texts = [rendered(processor, prompts(count))]
    run = lambda: run_slots(slots, [image()], texts, count, 1)  # noqa: E731
    run()
    wall = min(timed(run)[0] for _ in range(3))
    out = profile_step(f"slots_prefill_{count}", run, directory)
    out["wall_ms"] = round(wall * 1000, 1)
    out["phases"] = {name: round(seconds * 1000, 1) for name, seconds in slots.stats.phases.items()}
    suffixes = [split_after_image(text)[1] for text in texts[0]]
    out["suffix_tokens"] = sum(len(ids) for ids in processor.tokenizer(
        suffixes, add_special_tokens=False)["input_ids"])
    slots.release()
    empty_cache()
    return out


def slot_profiles(processor, slots, directory: Path, batches: list[int]) -> dict:
    """The slot decoder's decode step at other batches (one image, flash window)."""
    return {f"slots_{batch}": profile_slot_step(f"slots_{batch}", processor, slots, batch, None, directory)
            for batch in batches}


def profiles(processor, model, static, slots, directory: Path, batch: int) -> dict:
    texts = [rendered(processor, prompts(batch))]
    out = {}
    # The static decoder's step, as its graph replays it (eager, for the profiler).
    static.generate(image(), texts[0], batch_size=batch, max_new_tokens=2, temperature=0.0, seed=0)
    bucket = next(iter(static._buckets.values()))
    with torch.inference_mode():
        out["static"] = profile_step("static", lambda: static._decode_forward(bucket), directory)
    static.release()
    empty_cache()
    out["slots"] = profile_slot_step("slots", processor, slots, batch, 128, directory)
    return out


def bench_model(kind: str, args, directory: Path) -> dict:
    started = time.perf_counter()
    processor, model = random_qwen3_vl(kind)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # Bytes a decode step must read: all weights for a dense model; for a MoE, the router
    # picks 8 of 128 experts per token, so at large batches nearly all experts are read too.
    bandwidth = hbm_bandwidth_gbs() if torch.cuda.is_available() else 50.0
    result = {"model": kind, "weight_bytes": weight_bytes, "flash": None, "hbm_gbs": round(bandwidth, 1),
              "weight_read_ms": round(weight_bytes / bandwidth / 1e6, 2),
              "build_s": round(time.perf_counter() - started, 1),
              "experts": getattr(model.config.text_config, "_experts_implementation", None)}
    print(result, flush=True)
    bound_per_row = bandwidth * 1e9 / weight_bytes
    static = ImagePromptDecoder(processor, model)
    slots = SlotDecoder(processor, model)
    result["flash"], result["compiled_layers"] = slots.flash, slots.compile_layers
    tiny = kind == "tiny"
    sections = set(args.sections.split(","))
    with torch.inference_mode():
        if kind in ("8b", "tiny"):
            if "step" in sections:
                result["step"] = (
                    step_table("static", static, run_static, [4] if tiny else [64, 256], processor,
                               bound_per_row)
                    + step_table("slots", slots, run_slots, [4, 8] if tiny else [64, 256, 512, 1024],
                                 processor, bound_per_row))
            if "across" in sections:
                result["across_images"] = across_images(processor, static, slots, 4 if tiny else 32)
            if "lengths" in sections:
                result["variable_lengths"] = (variable_lengths(processor, slots, 32, 64, 16) if tiny
                                              else variable_lengths(processor, slots, 256))
            if "memory" in sections:
                result["memory"] = memory(model, weight_bytes)
            if "agreement" in sections:
                result["agreement"] = agreement(processor, model, static, slots)
            if "images" in sections:
                result["image_inputs"] = image_inputs(processor, slots, 4 if tiny else 16)
        else:
            result["step"] = (step_table("static", static, run_static, [64], processor, bound_per_row)
                              + step_table("slots", slots, run_slots, [64, 256, 512], processor,
                                           bound_per_row))
    if "prefill" in sections:
        result["prefill_profile"] = prefill_profile(processor, slots, Path(args.profile_dir or "."),
                                                    16 if tiny else 256)
    if args.profile_batches:
        batches = [int(b) for b in args.profile_batches.split(",")]
        result["profile"] = slot_profiles(processor, slots, Path(args.profile_dir or "."), batches)
    elif kind != "30b-a3b" and args.profile_dir:
        result["profile"] = profiles(processor, model, static, slots, Path(args.profile_dir),
                                     16 if tiny else 256)
    del static, slots, model
    empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", default="bench_decoder.json")
    parser.add_argument("--moe", choices=["yes", "no"], default="yes")
    parser.add_argument("--dense", choices=["yes", "no"], default="yes")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU: a smoke test")
    parser.add_argument("--profile-batches", default="",
                        help="profile the slot decoder's step at these batches, e.g. 64,1024")
    parser.add_argument("--profile-dir", default="")
    parser.add_argument("--sections", default="step,across,lengths,memory,agreement,images",
                        help="the 8B's sections to run (comma-separated)")
    args = parser.parse_args()
    import logging
    logging.basicConfig(level=logging.WARNING)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {"device": device, "torch": torch.__version__, "models": []}
    kinds = (["8b"] if args.dense == "yes" else []) + (["30b-a3b"] if args.moe == "yes" else [])
    if args.tiny:
        kinds = ["tiny"]
    for kind in kinds:
        try:
            result["models"].append(bench_model(kind, args, Path(args.out).parent))
        except Exception as exc:  # report what ran; the next model may still run
            import traceback
            traceback.print_exc()
            result["models"].append({"model": kind, "error": repr(exc)})
        write_json_atomic(Path(args.out), result)
    print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main()
