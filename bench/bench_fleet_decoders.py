"""The fleet end to end with the product's relations decoder (the paged engine), on one GPU.

    python3 -m bench.bench_fleet_decoders --work /tmp/bench --out bench_fleet_decoders.json

Qwen3-VL-8B architecture with random bf16 weights (saved once, loaded by the workers through
the product's loading path), greedy, 32 new tokens, 1280x960 images. For each workload: a real
Redis, one real Celery worker through the launcher (``--gpus 0``), a warm-up run (model load,
compile and graph captures excluded), then the timed run.

- dense: 4 images x 8 pairs x top-10 (320 descriptions), as ``bench.bench_relations``;
- skewed: 3 images x 20 pairs and 40 images x 1 pair, shuffled (1,000 descriptions), as
  ``bench.bench_scaling``'s workload.

Figures recorded before the paged engine replaced the slot decoder (bench/RESULTS.md, under the
key ``slots``) are the slot decoder's; ``bench.bench_fleet_engines`` times the slot decoder and
the paged engine through the fleet side by side, and the earlier static decoder's per-step speed
can still be compared with ``bench.bench_decoder``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from bench.harness import warm_then_timed
from bench.real_models import build_random_qwen3_vl_8b
from bench.relations_workload import image_size, skewed_pair_counts, write_workload
from config import Settings
from shared.jsonio import write_json_atomic
from shared.relations.run_settings import LOCAL_ENGINE


def workloads(directory: Path, tiny: bool) -> dict[str, tuple[Path, Path, Path]]:
    out = {}
    skewed = skewed_pair_counts(2, 6, 6) if tiny else skewed_pair_counts()
    size = image_size(tiny)
    for name, counts in (("dense", [4] * 2 if tiny else [8] * 4), ("skewed", skewed)):
        stage1, input_path = write_workload(directory / name, counts, size)
        # The warm-up: the first images' candidates, run under another name.
        candidates = json.loads(stage1.read_text())["per_image_top100_candidates"]
        warm = directory / name / "stage1_warmup.json"
        warm.write_text(json.dumps({"per_image_top100_candidates": dict(list(candidates.items())[:3])}))
        out[name] = (stage1, input_path, warm)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench")
    parser.add_argument("--out", default="bench_fleet_decoders.json")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--workloads", default="dense,skewed")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU: a smoke test")
    args = parser.parse_args()
    work = Path(args.work)
    started = time.perf_counter()
    model_dir = "tiny" if args.tiny else build_random_qwen3_vl_8b(work / "qwen3-vl-8b-random")
    result: dict = {"max_new_tokens": args.max_new_tokens, "build_s": round(time.perf_counter() - started, 1)}
    data = workloads(work / "fleet-decoders-data", args.tiny)
    for name in args.workloads.split(","):
        stage1, input_path, warm = data[name]
        run_dir = work / f"fleet-{name}-{LOCAL_ENGINE}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a rerun on a warm machine would resume
        settings = Settings(work_dir=run_dir, relations_model=str(model_dir), temperature=0.0,
                            max_new_tokens=args.max_new_tokens, poll_interval_seconds=0.05)
        texts, seconds = warm_then_timed(settings, (stage1, input_path), warm)
        result[name] = {LOCAL_ENGINE: {"seconds": round(seconds, 2), "descriptions": len(texts),
                                       "descriptions_per_s": round(len(texts) / seconds, 2)}}
        print(name, result[name], flush=True)
        write_json_atomic(Path(args.out), result)


if __name__ == "__main__":
    main()
