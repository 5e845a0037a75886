"""Edits near the GPU's limit: the exact speed-ups and the approximate modes, side by side
with today's editor in one process, at real size (random bf16 weights built on the GPU).

    python3 -m bench.bench_edit_speed --out edit_speed.json [--profile profile.txt]
    (--tiny: the tiny editor on the CPU, a smoke test; its figures mean nothing)

1. One forward of the transformer on the inputs of a real edit (captured from an
   edit's first step): each attention kernel, the all-ones mask, real rotary, compiled or not; each
   output against the eager one (relative L2 error), the median of ``--reps`` forwards.
2. 50-step edits through the product's Editor: today's (compiled), the exact speed-ups
   together, then the approximate modes (step cache, FP8); a profile of one forward of
   the exact editor.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from diffusers.models.attention_dispatch import _AttentionBackendRegistry

from bench.bench_realsize import INSTRUCTIONS, _device_info, _editor, _image, _sync, build_editor
from config import Settings
from shared.jsonio import write_json_atomic
from bench import edit_variants
from workers.editing import speed
from workers.editing.approximate import apply_approximate_modes, apply_fp8, remove_step_cache, step_cache_of
from workers.editing.compile import compile_editor_transformer


DEFAULT_BACKEND = _AttentionBackendRegistry.get_active_backend()[0]


def save(args, result: dict[str, Any]) -> None:
    write_json_atomic(Path(args.out), {k: v for k, v in result.items() if not k.startswith("_")})


def capture_inputs(pipeline, size: int) -> list[dict[str, Any]]:
    """The transformer's keyword arguments of an edit's first step (cond, then uncond)."""
    seen: list[dict[str, Any]] = []

    def hook(module, args, kwargs):
        seen.append({k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})

    handle = pipeline.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    # 2 steps: with 1, the scheduler's shifted timestep is NaN.
    _editor(pipeline, 2, size).edit(_image(size), INSTRUCTIONS[1], seed=0)
    handle.remove()
    return seen[:2]


def reset(transformer) -> None:
    """Back to today's editor: no compile, no hooks of ours, diffusers' processor, SDPA."""
    from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

    for block in transformer.transformer_blocks:
        block._compiled_call_impl = None
    handle = getattr(transformer, "_evalfleet_mask_hook", None)
    if handle is not None:
        handle.remove()
        transformer._evalfleet_mask_hook = None
    transformer.set_attn_processor(QwenDoubleStreamAttnProcessor2_0())
    # set_attention_backend also sets diffusers' process-wide default: back to its first one.
    _AttentionBackendRegistry.set_active_backend(DEFAULT_BACKEND)
    torch._dynamo.reset()


def forward_ms(transformer, kwargs: dict[str, Any], reps: int, device) -> tuple[float, torch.Tensor]:
    with torch.inference_mode():
        for _ in range(2):
            out = transformer(**kwargs)[0]
        times = []
        for _ in range(reps):
            _sync(device)
            start = time.perf_counter()
            out = transformer(**kwargs)[0]
            _sync(device)
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), out.float()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def forward_variants(pipeline, kwargs, args, device, result) -> None:
    """Part 1 (the module's docstring): one forward per variant, against the eager one."""
    t = pipeline.transformer
    settings = Settings(editor_compile="on", inductor_cache_dir=args.cache)
    no_mask = {**kwargs, "encoder_hidden_states_mask": None}
    ones = torch.ones(kwargs["encoder_hidden_states"].shape[:2], dtype=torch.long, device=device)
    with_mask = {**kwargs, "encoder_hidden_states_mask": ones}

    def backend(name):
        return lambda: t.set_attention_backend(name)

    def real(name=None):
        def setup():
            edit_variants.use_real_rotary(t)
            if name:
                t.set_attention_backend(name)
        return setup

    def compiled(setup=None):
        def go():
            if setup:
                setup()
            compile_editor_transformer(pipeline, settings, device)
        return go

    variants: list[tuple[str, Callable[[], None] | None, dict]] = [
        ("eager, SDPA", None, no_mask),
        ("eager, SDPA, all-ones mask passed", None, with_mask),
        ("eager, cuDNN", backend("_native_cudnn"), no_mask),
        ("eager, flash (SDPA)", backend("_native_flash"), no_mask),
        ("eager, efficient (SDPA)", backend("_native_efficient"), no_mask),
        ("eager, real rotary", real(), no_mask),
        ("compiled (today)", compiled(), no_mask),
        ("compiled, real rotary", compiled(real()), no_mask),
        ("compiled, real rotary, cuDNN", compiled(real("_native_cudnn")), no_mask),
        ("compiled, real rotary, flash (SDPA)", compiled(real("_native_flash")), no_mask),
    ]
    ref = None
    rows = result.setdefault("forward", {})
    for name, setup, inputs in variants:
        reset(t)
        try:
            if setup:
                setup()
            start = time.perf_counter()
            ms, out = forward_ms(t, inputs, args.reps, device)
            first_s = time.perf_counter() - start
            ref = out if ref is None else ref
            rows[name] = {"ms": round(ms, 2), "rel_err_vs_eager": round(rel_err(out, ref), 6),
                          "first_call_s": round(first_s, 1)}
        except Exception as exc:  # a kernel not on this device: recorded, the next one runs
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            traceback.print_exc()
        print(f"forward {name}: {rows[name]}", flush=True)
        save(args, result)
    # Rerun of the reference: the run-to-run spread of one kernel (0 if deterministic).
    reset(t)
    _, again = forward_ms(t, no_mask, 1, device)
    rows["eager, SDPA, rerun"] = {"rel_err_vs_eager": round(rel_err(again, ref), 6)}
    batched_cfg(pipeline, args, device, result)
    reset(t)


def batched_cfg(pipeline, args, device, result) -> None:
    """cond and uncond in one batch of 2 (the shorter text padded, so a mask) vs two passes."""
    t = pipeline.transformer
    cond, uncond = result["_inputs"]
    ec, eu = cond["encoder_hidden_states"], uncond["encoder_hidden_states"]
    n = max(ec.shape[1], eu.shape[1])
    pad = lambda e: torch.nn.functional.pad(e, (0, 0, 0, n - e.shape[1]))  # noqa: E731
    mask = torch.zeros(2, n, dtype=torch.long, device=device)
    mask[0, :ec.shape[1]] = 1
    mask[1, :eu.shape[1]] = 1
    both = {**cond, "hidden_states": torch.cat([cond["hidden_states"]] * 2),
            "timestep": torch.cat([cond["timestep"]] * 2),
            "encoder_hidden_states": torch.cat([pad(ec), pad(eu)]), "encoder_hidden_states_mask": mask,
            "img_shapes": cond["img_shapes"] * 2}
    rows = result["forward"]
    reset(t)
    edit_variants.use_real_rotary(t)
    try:
        one_c, _ = forward_ms(t, {**cond, "encoder_hidden_states_mask": None}, args.reps, device)
        one_u, _ = forward_ms(t, {**uncond, "encoder_hidden_states_mask": None}, args.reps, device)
        two, _ = forward_ms(t, both, args.reps, device)
        rows["eager, cond + uncond as two passes"] = {"ms": round(one_c + one_u, 2)}
        rows["eager, cond + uncond batched (mask)"] = {"ms": round(two, 2)}
    except Exception as exc:
        rows["eager, cond + uncond batched (mask)"] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
    print(f"batched cfg: {rows.get('eager, cond + uncond batched (mask)')}", flush=True)


def timed_edit(pipeline, args, steps: int, seed: int = 0) -> tuple[float, np.ndarray]:
    editor = _editor(pipeline, steps, args.size)
    _sync(pipeline.device)
    start = time.perf_counter()
    image = editor.edit(_image(args.size), INSTRUCTIONS[0], seed=seed)
    _sync(pipeline.device)
    return time.perf_counter() - start, np.asarray(image).astype(np.int16)


def full_edits(pipeline, args, device, result) -> None:
    """Part 2 (the module's docstring): 50-step edits, today's editor and each mode, warm (compiled) each."""
    t = pipeline.transformer
    settings = Settings(editor_compile="on", inductor_cache_dir=args.cache)
    rows = result.setdefault("edits", {})
    images: dict[str, np.ndarray] = {}

    def run(name, setup):
        reset(t)
        try:
            extra = setup() or {}
            compile_editor_transformer(pipeline, settings, device)
            warm, _ = timed_edit(pipeline, args, 2, seed=1)
            seconds, image = timed_edit(pipeline, args, args.steps)
            images[name] = image
            row = {"s": round(seconds, 2), "warmup_2_steps_s": round(warm, 1), **extra}
            if "today" in images and name != "today":
                diff = np.abs(image - images["today"])
                row["pixel_diff_vs_today"] = {"max": int(diff.max()), "mean": round(float(diff.mean()), 3)}
            cache = step_cache_of(pipeline)
            if cache is not None:
                row.update(cache.counts())
        except Exception as exc:
            row = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            traceback.print_exc()
        rows[name] = row
        print(f"edit {name}: {row}", flush=True)
        save(args, result)

    best = _best_backend(result)

    def exact():
        speed.speed_up_editor(pipeline)
        edit_variants.use_real_rotary(t)
        if best != "native":
            t.set_attention_backend(best)
        return {"attention": best}

    run("today", lambda: None)
    run("exact", exact)
    if args.profile:
        profile_forward(pipeline, result, args)

    def cache():
        exact()
        apply_approximate_modes(pipeline, False, args.cache_threshold, device)
        return {"threshold": args.cache_threshold}

    run(f"exact + step cache {args.cache_threshold:g}", cache)
    remove_step_cache(pipeline)
    # Each exact change alone (the mask is already None from the pipeline: shapes.mask_passed).
    run("today + real rotary", lambda: {"real_rotary": edit_variants.use_real_rotary(t)})
    if best != "native":
        run(f"today + attention {best}", lambda: t.set_attention_backend(best))
    # Last: FP8 rewrites the weights for good.
    if device.type == "cuda":
        run("exact + fp8", lambda: {**exact(), "fp8_layers": apply_fp8(t, device)})


def _best_backend(result) -> str:
    rows = result.get("forward", {})
    timed = {name: rows[f"compiled, real rotary, {label}"]["ms"]
             for name, label in (("_native_cudnn", "cuDNN"), ("_native_flash", "flash (SDPA)"))
             if "ms" in rows.get(f"compiled, real rotary, {label}", {})}
    return min(timed, key=timed.get) if timed else "native"


def profile_forward(pipeline, result, args) -> None:
    """One forward of the exact compiled editor under the profiler: ms by kind of kernel."""
    from torch.profiler import ProfilerActivity, profile

    kwargs = {**result["_inputs"][0], "encoder_hidden_states_mask": None}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.inference_mode():
        pipeline.transformer(**kwargs)
        _sync(pipeline.device)
        with profile(activities=activities) as prof:
            pipeline.transformer(**kwargs)
            _sync(pipeline.device)
    kinds = {"matrix products": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", 0) or 0
        # Kernels only: no host time of their own. "Command Buffer Full" is the host waiting
        # on a full launch queue, not a kernel.
        if us <= 0 or event.self_cpu_time_total > 0 or "Command Buffer" in event.key:
            continue
        name = event.key.lower()
        if name.startswith(("triton_", "void at::")):  # fused elementwise (rotary, norms, copies)
            kinds["other"] += us
        elif any(s in name for s in ("flash", "fmha", "cudnn", "attention", "sdpa")):
            kinds["attention"] += us
        elif any(s in name for s in ("gemm", "nvjet", "cutlass", "xmma", "gmma", "scaled_mm")):
            kinds["matrix products"] += us
        else:
            kinds["other"] += us
    result["profile_ms"] = {k: round(v / 1000, 1) for k, v in kinds.items()}
    result["profile_ms"]["total"] = round(sum(kinds.values()) / 1000, 1)
    Path(args.profile).write_text(prof.key_averages().table(sort_by="self_device_time_total", row_limit=40)
                                  if torch.cuda.is_available() else prof.key_averages().table(row_limit=40))
    print(f"profile: {result['profile_ms']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--profile", default="")
    parser.add_argument("--cache", default="/tmp/inductor-edit-speed")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--cache-threshold", type=float, default=0.05)
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    args.steps, args.size = (2, 128) if args.tiny else (50, 1024)
    device = torch.device("cpu" if args.tiny else "cuda")
    pipeline, build_s = build_editor(args.tiny, device)
    result: dict[str, Any] = {"steps": args.steps, "size": args.size, "true_cfg_scale": 4.0,
                              "build_s": round(build_s, 1), **_device_info()}
    inputs = capture_inputs(pipeline, args.size)
    result["_inputs"] = inputs
    result["shapes"] = {"image_tokens": inputs[0]["hidden_states"].shape[1],
                        "text_tokens": [i["encoder_hidden_states"].shape[1] for i in inputs],
                        "mask_passed": [i.get("encoder_hidden_states_mask") is not None for i in inputs]}
    print(f"shapes: {result['shapes']}", flush=True)
    save(args, result)
    try:
        if not args.skip_forward:
            forward_variants(pipeline, inputs[0], args, device, result)
        full_edits(pipeline, args, device, result)
    finally:
        result.pop("_inputs", None)
        save(args, result)
    print(json.dumps(result, indent=1), flush=True)


if __name__ == "__main__":
    main()
