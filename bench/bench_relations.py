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
import time
from pathlib import Path

from PIL import Image

from bench.real_models import build_random_qwen3_vl_8b, hbm_bandwidth_gbs
from config import Settings, to_environ
from producer.dispatch import celery_client
from producer.embedded import EmbeddedRedis, LocalFleet
from producer.progress import wait_for_stage
from producer.relations.enqueue import enqueue_relations
from producer.relations.sample import write_relations_sample
from shared.messages import RELATIONS_STAGE
from shared.relations.data import prepare_data_for_inference
from shared.store import RunStore, connect

SCALE = 3.2


NAMES = ["man", "horse", "hat", "fence", "tree", "dog", "car", "kite", "bench", "cup", "lamp", "boat"]


def dense_workload(directory: Path, images: int = 4, pairs_per_image: int = 8) -> tuple[Path, Path, Path]:
    """Visual-Genome-like density: each 1280x960 image has 6 objects and ``pairs_per_image``
    pairs with 12 stage-1 candidates each (one "no relation"), so top-10 keeps 10 per pair."""
    stage1, input_path = write_workload(directory, [pairs_per_image] * images)
    candidates = json.loads(stage1.read_text())["per_image_top100_candidates"]
    warm = directory / "stage1_warmup.json"
    warm.write_text(json.dumps({"per_image_top100_candidates": {"0": candidates["0"][:3]}}))
    return stage1, input_path, warm


def write_workload(directory: Path, pair_counts: list[int], size: tuple[int, int] = (1280, 960),
                   seed: int = 7) -> tuple[Path, Path]:
    """``dense_workload``'s images and candidates, image ``i`` with ``pair_counts[i]`` pairs
    (at least 6 objects, more when an image needs more than 30 pairs). Boxes are drawn for
    1280x960 and scaled to ``size``. Returns (stage-1 file, input file)."""
    import random

    from PIL import ImageDraw

    rng = random.Random(seed)
    sx, sy = size[0] / 1280, size[1] / 960
    (directory / "images").mkdir(parents=True, exist_ok=True)
    records, stage1 = [], {}
    for i, pairs_per_image in enumerate(pair_counts):
        names = _object_names(pairs_per_image)
        img = Image.new("RGB", size, "beige")
        draw = ImageDraw.Draw(img)
        objects = []
        for j, name in enumerate(names):
            x, y = rng.randrange(0, 1000), rng.randrange(0, 700)
            box = [x, y, x + rng.randrange(60, 280), y + rng.randrange(60, 260)]
            bbox = [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)]
            draw.rectangle(bbox, fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
            objects.append({"id": j + 1, "class_name": name, "bbox": bbox})
        img.save(directory / "images" / f"{i}.png")
        records.append({"image_id": i, "image_path": f"images/{i}.png", "objects": objects})
        pairs = [(a, b) for a in names for b in names if a != b][:pairs_per_image]
        stage1[str(i)] = [
            {"subject": a, "object": b, "similarity": round(0.95 - 0.05 * k - rng.random() * 0.01, 4),
             "predicted_predicate": "no relation" if k == 5 else f"pred{k}", "has_gt": k == 0,
             "gt_predicates": ["pred0"]}
            for a, b in pairs for k in range(12)]
    (directory / "input.json").write_text(json.dumps(records))
    (directory / "stage1.json").write_text(json.dumps({"per_image_top100_candidates": stage1}))
    return directory / "stage1.json", directory / "input.json"


def _object_names(pairs: int) -> list[str]:
    """Six objects (dense_workload's), or the fewest of NAMES with ``pairs`` ordered pairs."""
    return NAMES[:max(6, next(n for n in range(2, len(NAMES) + 1) if n * (n - 1) >= pairs))]


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


def run_fleet(settings: Settings, stage1: Path, input_path: Path, warm: Path) -> tuple[dict, float]:
    with EmbeddedRedis(settings.work_dir / "redis") as server:
        settings = settings.replace(broker_url=server.url)
        client, app = connect(server.url), celery_client(settings)
        with LocalFleet(to_environ(settings), ["relations"], settings.work_dir / "workers.log", gpus="0") as fleet:
            for name, s1 in (("warmup", warm), ("timed", stage1)):
                start = time.perf_counter()
                enq = enqueue_relations(settings, app, client, s1, input_path, name)
                wait_for_stage(RunStore(client, enq.run_id), RELATIONS_STAGE, 0.05, fleet.check)
                seconds = time.perf_counter() - start
                print(f"fleet {name}: {enq.pairs_sent} pairs in {seconds:.1f}s", flush=True)
        done = RunStore(client, "timed").done(RELATIONS_STAGE)
    texts = {(key, g["predicate"]): g["generated_description"]
             for key, rec in done.items() for g in rec["stage2_generated"]}
    return texts, seconds


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
    fleet_texts, fleet_s = run_fleet(settings, stage1, input_path, warm)

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
