"""Relations benchmark: the fleet (real Redis, real Celery worker) against the seed-style loop.

    python -m bench.bench_relations --work /tmp/bench --out bench_relations.json

Same GPU, model (Qwen3-VL-8B architecture, random bf16 weights) and data (the built-in
sample, images scaled to about 1280x960 so each prompt carries ~1200 vision tokens),
greedy decoding with a fixed token budget. The fleet runs first (a warm-up run loads the
model in the worker, then the timed run), then the seed loop runs in this process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from bench.harness import hbm_bandwidth_gbs, warm_then_timed
from bench.real_models import build_random_qwen3_vl_8b
from bench.relations_workload import dense_workload
from config import Settings
from producer.relations.sample import write_relations_sample
from shared.relations.data import prepare_data_for_inference

SCALE = 3.2


def scaled_sample(directory: Path) -> tuple[Path, Path, Path]:
    """The sample with images and boxes scaled by SCALE; plus a one-image stage-1 file for warm-up."""
    stage1, input_path = write_relations_sample(directory)
    records = json.loads(input_path.read_text())
    for record in records:
        path = directory / record["image_path"]
        img = Image.open(path)
        img.resize((round(img.width * SCALE), round(img.height * SCALE))).save(path)
        for obj in record["objects"]:
            obj["bbox"] = [round(v * SCALE) for v in obj["bbox"]]
    input_path.write_text(json.dumps(records))
    candidates = json.loads(stage1.read_text())["per_image_top100_candidates"]
    first = next(iter(candidates))
    warm = directory / "recall_results_warmup.json"
    warm.write_text(json.dumps({"per_image_top100_candidates": {first: candidates[first][:3]}}))
    return stage1, input_path, warm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/bench")
    parser.add_argument("--out", default="bench_relations.json")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--fleet-batch-size", type=int, default=64)
    parser.add_argument("--workload", choices=["sample", "dense"], default="dense")
    args = parser.parse_args()
    work = Path(args.work)
    model_dir = build_random_qwen3_vl_8b(work / "qwen3-vl-8b-random")
    make = scaled_sample if args.workload == "sample" else dense_workload
    stage1, input_path, warm = make(work / f"data-{args.workload}")
    settings = Settings(work_dir=work / f"fleet-{args.workload}", relations_model=str(model_dir),
                        temperature=0.0, max_new_tokens=args.max_new_tokens,
                        batch_size=args.fleet_batch_size, poll_interval_seconds=0.05)
    fleet_texts, fleet_s = warm_then_timed(settings, (stage1, input_path), warm)
    print(f"fleet: {len(fleet_texts)} descriptions in {fleet_s:.1f}s", flush=True)

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from bench.seed_relations import seed_generate

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda")
    pairs = prepare_data_for_inference(stage1, input_path, settings.top_k).pairs
    seed_generate(processor, model, pairs[:1], args.max_new_tokens)  # warm-up
    seed_texts, seed_s, seed_cpu_s = seed_generate(processor, model, pairs, args.max_new_tokens)

    n = len(seed_texts)
    same = sum(fleet_texts.get(k) == v for k, v in seed_texts.items())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = hbm_bandwidth_gbs()
    result = {
        "device": torch.cuda.get_device_name(), "descriptions": n, "pairs": len(pairs),
        "max_new_tokens": args.max_new_tokens, "fleet_batch_size": args.fleet_batch_size,
        "workload": args.workload, "fleet_s": round(fleet_s, 2), "seed_s": round(seed_s, 2),
        "seed_preprocessing_s": round(seed_cpu_s, 2),
        "fleet_desc_per_s": round(n / fleet_s, 3), "seed_desc_per_s": round(n / seed_s, 3),
        "fleet_tok_per_s": round(n * args.max_new_tokens / fleet_s, 1),
        "seed_tok_per_s": round(n * args.max_new_tokens / seed_s, 1),
        "speedup": round(seed_s / fleet_s, 2),
        "identical_outputs": same, "weight_bytes": weight_bytes, "hbm_gbs": round(bandwidth, 1),
        "decode_bound_tok_per_s_at_batch": {
            b: round(b * bandwidth * 1e9 / weight_bytes, 1) for b in (8, args.fleet_batch_size)},
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
