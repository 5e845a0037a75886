"""Where a decode step's time goes: plain ``model.generate`` at several batch sizes, one profile.

    python -m bench.profile_generate --work /tmp/bench --out profile_generate.json

Qwen3-VL-8B architecture (random bf16 weights), one 1280x960 image (~1200 vision tokens) per
prompt, greedy. For each batch size: prefill-only time (1 new token) and the time of
``max_new_tokens`` tokens; per-step time = (total - prefill) / (tokens - 1). Then a torch
profiler table of the decode steps at the largest batch, by CUDA and CPU time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from bench.real_models import build_random_qwen3_vl_8b


def inputs_for(processor, batch: int, device) -> dict:
    image = Image.new("RGB", (1280, 960), "beige")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the man on the horse"}]}],
        tokenize=False, add_generation_prompt=True)
    return processor(text=[text] * batch, images=[image] * batch, padding=True, return_tensors="pt").to(device)


def timed_generate(model, inputs, tokens: int, **kwargs) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **kwargs)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/bench")
    parser.add_argument("--out", default="profile_generate.json")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--static", action="store_true",
                        help="static KV cache (transformers compiles the decode step when it can)")
    parser.add_argument("--batches", default="1,8,16,64")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    extra = {"cache_implementation": "static"} if args.static else {}
    model_dir = build_random_qwen3_vl_8b(f"{args.work}/qwen3-vl-8b-random")
    processor = AutoProcessor.from_pretrained(model_dir)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda")
    print("can compile fullgraph:", getattr(model, "_can_compile_fullgraph", None), flush=True)
    rows = []
    for batch in map(int, args.batches.split(",")):
        inputs = inputs_for(processor, batch, model.device)
        t0 = time.perf_counter()
        timed_generate(model, inputs, 3, **extra)  # warm-up at this shape (compiles if static)
        print(f"batch {batch} warm-up {time.perf_counter() - t0:.1f}s", flush=True)
        prefill = timed_generate(model, inputs, 1, **extra)
        total = timed_generate(model, inputs, args.tokens, **extra)
        step = (total - prefill) / (args.tokens - 1)
        rows.append({"static": args.static, "batch": batch, "prompt_tokens": int(inputs["input_ids"].shape[1]),
                     "prefill_s": round(prefill, 3), "total_s": round(total, 3),
                     "ms_per_step": round(1000 * step, 1), "tok_per_s": round(batch / step, 1)})
        print(rows[-1], flush=True)
    if args.no_profile:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)
        return
    from torch.profiler import ProfilerActivity, profile

    inputs = inputs_for(processor, 64, model.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        timed_generate(model, inputs, 8)
    table_cuda = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    table_cpu = prof.key_averages().table(sort_by="cpu_time_total", row_limit=15)
    print(table_cuda)
    print(table_cpu)
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows,
                   "profile_cuda": table_cuda, "profile_cpu": table_cpu}, f, indent=2)


if __name__ == "__main__":
    main()
