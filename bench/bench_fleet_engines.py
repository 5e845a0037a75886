"""The relations engines through the fleet on the real-run shape, one GPU: slot against paged.

    python3 -m bench.bench_fleet_engines --work /tmp/bench --out bench_fleet_engines.json \
        [--images 40] [--max-batch slot=256,paged=1024] [--engines slot,paged] [--tiny]

Qwen3-VL-8B architecture with random bf16 weights (saved once, loaded by the worker through the
product's loading path), greedy, 1280x960 images, each with 10 pairs x top-10 = 100 relation
prompts (``bench.relations_workload``), the shape of ``bench.bench_engines``'s ``realrun``.
Random weights never emit eos, so the run is registered with the benchmark-only setting
EVALFLEET_BENCH_TOKEN_BUDGETS (``config/bench_token_budgets.py``): each prompt ends at a budget
drawn log-normal, median 140, sigma 0.6, clamped to 1..512, seed 0, from its pair and predicate
(the same distribution as ``realrun``, other draws: those are image-major). Generated tokens
are the sum of those budgets.

One real Redis and, for each engine in turn, one real Celery worker on one GPU: ``paged``, the
product's, through the launcher (``--gpus 0``); ``slot``, the baseline the product no longer
has, the same worker with bench/slot_worker.py's app (``bench.harness.slot_fleet``). Every run
has the product's defaults otherwise (EVALFLEET_TASK_PROMPTS 1024: ten images a task); the
batch travels with each run (EVALFLEET_MAX_BATCH). For each engine a warm-up run (the model's
load, compiles and graph captures; 10 other images, shorter budgets: median 32, so it is quick
but reaches the batch sizes of the timed run), then the timed run, from the enqueue to the last
description. Reported per engine: descriptions/s, generated tok/s, and the engines' own log
lines of the timed run (seconds inside the engine per task, occupancy); then paged over slot.
``--tiny``: the tiny model on the CPU, 4 small images of 2 pairs, budgets of median 6: a smoke
test of this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import time
from pathlib import Path

from bench.harness import (embedded_store, local_fleet, quiet_progress_bars, relations_texts,
                           slot_fleet, time_relations_run, wait_for_workers)
from bench.real_models import build_random_qwen3_vl_8b
from bench.relations_workload import image_size, write_workload
from config import Settings
from config.bench_token_budgets import parse_token_budgets
from shared.jsonio import write_json_atomic

REALRUN_BUDGETS = "lognormal:median=140,sigma=0.6,cap=512,seed=0"
WARM_BUDGETS = "lognormal:median=32,sigma=0.6,cap=512,seed=1"
TINY_BUDGETS = "lognormal:median=6,sigma=0.6,cap=12,seed=0"
WARM_IMAGES = 10
# Each engine's workers: the product's (the paged engine), or the same decoding with the slot decoder.
FLEETS = {"slot": slot_fleet, "paged": local_fleet}
# What workers.relations.generator logs once a task's prompts are decoded.
ENGINE_LINE = re.compile(rb"(\w+) engine decoded (\d+) prompts of (\d+) images in ([\d.]+)s \((.*?)\): "
                         rb"(\d+) rows, (\d+) steps, occupancy ([\d.]+)")


def engine_batches(text: str) -> dict[str, int]:
    """``slot=256,paged=1024`` -> {"slot": 256, "paged": 1024}."""
    pairs = (part.split("=") for part in text.split(","))
    return {name.strip(): int(batch) for name, batch in pairs}


def engine_lines(log_path: Path, offset: int, count: int, timeout: float = 60) -> tuple[dict, int]:
    """The engines' first ``count`` log lines past byte ``offset`` of the workers' log (one per
    task: a task logs its line after storing its last description, so the line may come after the
    run is done): seconds inside the engine, occupancy weighted by steps, each task's line; and
    the offset past them."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log_path, "rb") as log:
            log.seek(offset)
            matches = list(ENGINE_LINE.finditer(log.read()))
        if len(matches) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    tasks = [{"engine": m[1].decode(), "prompts": int(m[2]), "images": int(m[3]), "seconds": float(m[4]),
              "phases": m[5].decode(), "rows": int(m[6]), "steps": int(m[7]), "occupancy": float(m[8])}
             for m in matches[:count]]
    steps = sum(task["steps"] for task in tasks)
    found = {"engine_seconds": round(sum(task["seconds"] for task in tasks), 2),
             "occupancy": round(sum(t["occupancy"] * t["steps"] for t in tasks) / steps, 3) if steps else None,
             "task_lines": tasks}
    return found, offset + (matches[len(tasks) - 1].end() if tasks else 0)


def workloads(directory: Path, images: int, pairs: int, tiny: bool) -> tuple[tuple[Path, Path], tuple[Path, Path]]:
    """(timed stage-1 and input files, warm-up ones: other images of the same shape)."""
    size = image_size(tiny)
    timed = write_workload(directory / "timed", [pairs] * images, size)
    warm = write_workload(directory / "warm", [pairs] * min(images, WARM_IMAGES), size, seed=8)
    return timed, warm


def generated_tokens(texts: dict[tuple[str, str], str], spec: str, max_new_tokens: int) -> int:
    """The tokens a run generated: its prompts' budgets (random weights never stop earlier)."""
    budgets = parse_token_budgets(spec)
    return sum(budgets.budget(key, predicate, max_new_tokens) for key, predicate in texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--work", default="/tmp/bench")
    parser.add_argument("--out", default="bench_fleet_engines.json")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=10, help="pairs per image (x top-10 prompts)")
    parser.add_argument("--engines", default="slot,paged")
    parser.add_argument("--max-batch", default="slot=256,paged=1024", type=engine_batches,
                        help="each engine's EVALFLEET_MAX_BATCH")
    parser.add_argument("--budgets", default=None, help=f"EVALFLEET_BENCH_TOKEN_BUDGETS ({REALRUN_BUDGETS})")
    parser.add_argument("--tiny", action="store_true", help="the tiny model on the CPU: a smoke test")
    args = parser.parse_args()
    quiet_progress_bars()
    work = Path(args.work)
    images, pairs = (4, 2) if args.tiny else (args.images, args.pairs)
    spec = args.budgets or (TINY_BUDGETS if args.tiny else REALRUN_BUDGETS)
    max_new_tokens = parse_token_budgets(spec).cap
    started = time.perf_counter()
    model_dir = "tiny" if args.tiny else build_random_qwen3_vl_8b(work / "qwen3-vl-8b-random")
    warm_spec = TINY_BUDGETS if args.tiny else WARM_BUDGETS
    result: dict = {"images": images, "prompts_per_image": pairs * 10, "budgets": spec, "warm_budgets": warm_spec,
                    "max_new_tokens": max_new_tokens, "build_s": round(time.perf_counter() - started, 1)}
    timed_data, warm_data = workloads(work / "fleet-engines-data", images, pairs, args.tiny)
    run_dir = work / "fleet-engines"
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun on a warm machine would resume
    settings = Settings(work_dir=run_dir, relations_model=str(model_dir), temperature=0.0,
                        max_new_tokens=max_new_tokens, bench_token_budgets=spec, poll_interval_seconds=0.05)
    all_texts: dict[str, dict] = {}
    with embedded_store(settings) as (settings, client):
        for engine in args.engines.split(","):
            with FLEETS[engine](settings, client, [settings.queue_relations],
                                "cpu" if args.tiny else "0") as fleet:
                wait_for_workers(fleet)
                result[engine], all_texts[engine] = time_engine(fleet, engine, args.max_batch[engine],
                                                                (timed_data, spec), (warm_data, warm_spec))
            print(engine, {k: v for k, v in result[engine].items() if k != "task_lines"}, flush=True)
            write_json_atomic(Path(args.out), result)
    if "slot" in result and "paged" in result:
        result["paged_over_slot"] = round(result["paged"]["descriptions_per_s"] / result["slot"]["descriptions_per_s"], 3)
        # Greedy both: in bf16 a row may part where two logits are within rounding.
        slot, paged = all_texts["slot"], all_texts["paged"]
        result["same_descriptions"] = round(sum(slot[k] == paged.get(k) for k in slot) / len(slot), 4)
        print("paged / slot, descriptions/s:", result["paged_over_slot"], "same descriptions:",
              result["same_descriptions"], flush=True)
    result["device"] = device_name()
    write_json_atomic(Path(args.out), result)


def time_engine(fleet, engine: str, batch: int, timed: tuple[tuple[Path, Path], str],
                warm: tuple[tuple[Path, Path], str]) -> tuple[dict, dict]:
    """A warm-up run, then the timed run, on ``fleet`` at ``batch`` rows: the timed run's
    figures and texts. A data set comes with its token budgets' spec."""
    (timed_data, spec), (warm_data, warm_spec) = timed, warm
    offset = fleet.log_path.stat().st_size
    run = fleet.settings.replace(max_batch=batch)
    warm_run = time_relations_run(dataclasses.replace(fleet, settings=run.replace(bench_token_budgets=warm_spec)),
                                  warm_data, f"warm-{engine}")
    _, offset = engine_lines(fleet.log_path, offset, warm_run.tasks_sent)
    timed_run = time_relations_run(dataclasses.replace(fleet, settings=run), timed_data, f"timed-{engine}")
    lines, offset = engine_lines(fleet.log_path, offset, timed_run.tasks_sent)
    texts = relations_texts(fleet.client, timed_run.run_id)
    tokens = generated_tokens(texts, spec, run.max_new_tokens)
    return {"max_batch": batch, "warm_s": round(warm_run.seconds, 2), "seconds": round(timed_run.seconds, 2),
            "descriptions": len(texts), "tasks_sent": timed_run.tasks_sent, "generated_tokens": tokens,
            "descriptions_per_s": round(len(texts) / timed_run.seconds, 2),
            "generated_tok_per_s": round(tokens / timed_run.seconds, 1), **lines}, texts


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
