"""Relations multi-GPU scaling: the fleet (one shared queue) against the seed's static split.

    python3 -m bench.bench_scaling --gpus 0,1 --work /tmp/bench --out bench_scaling.json
    python3 -m bench.bench_scaling --gpus all --work /tmp/bench --out bench_scaling.json
    python -m bench.bench_scaling --tiny --gpus 0,1 --work /tmp/scal-tiny --out /tmp/scal-tiny.json

One process, one model (Qwen3-VL-8B architecture, random bf16 weights, built once by
``bench.real_models.build_random_qwen3_vl_8b`` and reused from ``--work``), one skewed data set:
a few images with many pairs and many images with few (``--big-images x --big-pairs``,
``--small-images x --small-pairs``, shuffled with a fixed seed), 1280x960 images drawn like
``bench.relations_workload``, 12 stage-1 candidates per pair of which top-10 are kept,
greedy decoding with ``--max-new-tokens`` (32). Stages, in this order (the JSON is rewritten
after each, so a run cut short keeps what it measured):

1. the fleet on 1 GPU, then on all N (``bench.scaling_fleet``): one shared queue, every worker
   warmed up on every task size (verified) before the timed run.
2. the seed's static split on N GPUs (``bench.scaling_seed_split``): the pairs in N contiguous
   shards of equal pair counts, one process per GPU, all starting on one go signal
   (``bench.static_split``).
3. optional (``--decoder-split auto|yes``): the product's decoder under the same static split
   (``bench.scaling_decoder_split``): against the fleet it shows the scheduling effect, against
   the seed split the per-step speed.
4. the seed on 1 GPU over all pairs (``--seed-1gpu auto``: only when the estimate fits in
   ``--budget-s``); when skipped, the 1-GPU seed seconds are the sum of the shards' busy times
   (the same per-pair cost on one GPU), and the JSON says so.

Speedup = 1-GPU seconds / N-GPU seconds of the same design, efficiency = speedup / N.
Targets reported against (not enforced): fleet >= 1.9x on 2 GPUs, efficiency >= 0.95 on 8.

Time (estimated from the H100 figures in RESULTS.md: the seed loop 2.46 descriptions/s, a
fleet task of 80 prompts 1.5 s; not measured on H200s): about 7 min on 2 GPUs with the defaults
(1000 descriptions: seed split ~200 s, fleet ~30 s then ~15 s, ~40 s to build the model the
first time, ~30-60 s per stage that loads the model), ~5 min on 4, ~4.5 min on 8. On 8 GPUs the
fleet's timed run lasts only ~4 s, a handful of tasks per worker, too short for its efficiency
to mean much: ``--big-images 9 --small-images 120`` (3x) gives it ~12 s for ~7.5 min in all.
The 1-GPU seed (~400 s for the default workload) does not fit beside the rest in 8 minutes, so
``auto`` skips it unless the workload is shrunk.

``--tiny``: the project's tiny Qwen3-VL on the CPU; the "GPUs" are fake ids handed to the
launcher (each worker sees none and runs on the CPU, as in tests/test_launcher.py). A smoke
test: its ratios mean nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import scaling_decoder_split, scaling_fleet, scaling_seed_split
from bench.harness import Texts, hbm_bandwidth_gbs, quiet_progress_bars
from bench.relations_workload import CHUNK_PAIRS, image_size, skewed_pair_counts, write_workload
from bench.static_split import contiguous_shards
from shared.jsonio import write_json_atomic
from shared.relations.data import prepare_data_for_inference

TARGET_SPEEDUP_2 = 1.9
TARGET_EFFICIENCY_8 = 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", default="all", help='GPU ids like 0,1 or "all" (fake ids with --tiny)')
    p.add_argument("--work", default="/tmp/bench", help="model (reused), data, fleet state, shard files")
    p.add_argument("--out", default="bench_scaling.json")
    p.add_argument("--tiny", action="store_true", help="the tiny Qwen3-VL on the CPU: a smoke test")
    p.add_argument("--big-images", type=int, default=None, help="images with many pairs (default 3; tiny 2)")
    p.add_argument("--big-pairs", type=int, default=None, help="pairs of a big image (default 20; tiny 6)")
    p.add_argument("--small-images", type=int, default=None, help="images with few pairs (default 40; tiny 6)")
    p.add_argument("--small-pairs", type=int, default=1, help="pairs of a small image (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 32; tiny 8")
    p.add_argument("--fleet-batch-size", type=int, default=64)
    p.add_argument("--seed-1gpu", choices=["auto", "yes", "no"], default="auto",
                   help="the seed on 1 GPU over all pairs; auto: only if it fits in --budget-s")
    p.add_argument("--decoder-split", choices=["auto", "yes", "no"], default="no",
                   help="the product decoder under the static split; auto: only if it fits in --budget-s")
    p.add_argument("--budget-s", type=float, default=480,
                   help="seconds from start that the optional stages must fit in (estimated)")
    args = p.parse_args(argv)
    tiny = args.tiny
    for name, real, small in (("big_images", 3, 2), ("big_pairs", 20, 6), ("small_images", 40, 6),
                              ("max_new_tokens", 32, 8)):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else real)
    if not 1 <= args.big_pairs <= 132 or not 1 <= args.small_pairs <= 132:
        p.error("--big-pairs and --small-pairs must be 1..132 (12 objects per image at most)")
    return args


# --- GPUs, model, data ----------------------------------------------------------------------

def resolve_gpus(spec: str, tiny: bool) -> list[str]:
    """The GPU ids: the list given, or every visible GPU for "all" (what the launcher would use)."""
    from workers.launch import visible_gpus

    gpus = visible_gpus() if spec == "all" else [g.strip() for g in spec.split(",") if g.strip()]
    if not gpus:
        raise SystemExit("no GPU ids: pass --gpus 0,1 (with --tiny these are fake ids for the CPU)")
    if len(set(gpus)) != len(gpus):
        raise SystemExit(f"--gpus lists an id twice: {spec}")
    return gpus


def prepare_model(tiny: bool, work: Path) -> tuple[Path, dict[str, Any]]:
    from bench.real_models import build_random_qwen3_vl_8b, checkpoint_stats

    start = time.perf_counter()
    if tiny:
        from workers.models.loading import QWEN3_VL, resolve_model_path

        model_dir = Path(resolve_model_path("tiny", work / "models", kind=QWEN3_VL))
        config = "the project's tiny Qwen3-VL (workers/models/tiny/qwen3_vl.py), float32 on the CPU"
    else:
        model_dir = build_random_qwen3_vl_8b(work / "qwen3-vl-8b-random")
        config = "Qwen3-VL-8B-Instruct's configuration, random bf16 weights"
    stats = checkpoint_stats(model_dir)
    return model_dir, {"dir": str(model_dir), "config": config,
                       "parameters": sum(s["parameters"] for s in stats.values()),
                       "bytes": sum(s["bytes"] for s in stats.values()),
                       "build_or_reuse_s": round(time.perf_counter() - start, 1)}


def pair_counts(args: argparse.Namespace) -> list[int]:
    return skewed_pair_counts(args.big_images, args.big_pairs, args.small_images, args.small_pairs)


def write_data(args: argparse.Namespace, directory: Path) -> tuple[Path, Path, list[dict]]:
    shutil.rmtree(directory, ignore_errors=True)
    stage1, input_path = write_workload(directory, pair_counts(args), image_size(args.tiny))
    pairs = prepare_data_for_inference(stage1, input_path, 10).pairs
    return stage1, input_path, pairs


# --- scaling, comparison, output ---------------------------------------------------------------

def add_scaling(entry: dict[str, Any], one_gpu_s: float, n: int, basis: str) -> None:
    speedup = one_gpu_s / entry["seconds"]
    entry.update(one_gpu_s=round(one_gpu_s, 3), speedup=round(speedup, 3),
                 efficiency=round(speedup / n, 3), speedup_basis=basis)


def identical(a: Texts, b: Texts) -> dict[str, int]:
    common = a.keys() & b.keys()
    return {"identical": sum(a[k] == b[k] for k in common), "compared": len(common)}


def fits(started: float, estimate: float, budget: float) -> bool:
    return time.perf_counter() - started + estimate <= budget


def environment(tiny: bool, gpus: list[str]) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(),
                            "torch": torch.__version__, "cuda": torch.version.cuda,
                            "transformers": transformers.__version__}
    if tiny:
        info["devices"] = [{"gpu": g, "name": "fake id: the worker sees no GPU and runs on the CPU"}
                           for g in gpus]
        info["cpu"] = platform.processor() or platform.machine()
        info["cpu_count"] = os.cpu_count()
        return info
    smi = _nvidia_smi()
    info["devices"] = [{"gpu": g, **smi.get(g, {"name": torch.cuda.get_device_name(i)})}
                       for i, g in enumerate(gpus)]
    return info


def _nvidia_smi() -> dict[str, dict[str, str]]:
    """GPU index -> name and memory, as the launcher's ids count them (nvidia-smi's order)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False)
    rows = [[f.strip() for f in line.split(",")] for line in out.stdout.splitlines()]
    return {r[0]: {"name": r[1], "memory": r[2]} for r in rows if len(r) == 3}


def summary(result: dict[str, Any], n: int, tiny: bool) -> dict[str, Any]:
    fleet, seed = result["fleet"].get(str(n), {}), result["seed_split"].get(str(n), {})
    out: dict[str, Any] = {
        "gpu_count": n, "fleet_s": fleet.get("seconds"), "fleet_1gpu_s": fleet.get("one_gpu_s"),
        "fleet_speedup": fleet.get("speedup"), "fleet_efficiency": fleet.get("efficiency"),
        "fleet_tail_s": fleet.get("tail_s"),
        "fleet_generate_s_total_vs_1gpu": fleet.get("generate_s_total_vs_1gpu"),
        "seed_split_s": seed.get("seconds"),
        "seed_split_speedup": seed.get("speedup"), "seed_split_efficiency": seed.get("efficiency"),
        "seed_split_speedup_basis": seed.get("speedup_basis"), "seed_split_tail_s": seed.get("tail_s"),
        "fleet_over_seed_split": round(seed["seconds"] / fleet["seconds"], 2) if fleet and seed else None,
        "targets": {"fleet_speedup_on_2_gpus_min": TARGET_SPEEDUP_2,
                    "fleet_efficiency_on_8_gpus_min": TARGET_EFFICIENCY_8},
    }
    out["target"], met = target_check(n, fleet)
    if tiny:
        out.update(ratio_meaningful=False, target_met=None,
                   ratio_note="tiny model on a 2-core CPU with fake GPU ids: all 'GPUs' share the same "
                              "cores, so speedups say nothing about GPUs; this run only checks that every "
                              "stage runs end to end")
    else:
        out.update(ratio_meaningful=True, target_met=met)
    return out


def target_check(n: int, fleet: dict[str, Any]) -> tuple[str, bool | None]:
    """The target that applies to ``n`` GPUs and whether the fleet met it (None: no target)."""
    if n == 2:
        return f"fleet speedup >= {TARGET_SPEEDUP_2} on 2 GPUs", fleet["speedup"] >= TARGET_SPEEDUP_2
    if n == 8:
        return f"fleet efficiency >= {TARGET_EFFICIENCY_8} on 8 GPUs", fleet["efficiency"] >= TARGET_EFFICIENCY_8
    return f"none for {n} GPU(s) (the targets are for 2 and 8)", None


def one_line(s: dict[str, Any], device: str) -> str:
    n = s["gpu_count"]
    line = (f"scaling on {n} x {device}: fleet {s['fleet_1gpu_s']}s -> {s['fleet_s']}s = "
            f"{s['fleet_speedup']}x (efficiency {s['fleet_efficiency']}, tail {s['fleet_tail_s']}s)")
    if s["seed_split_s"] is not None:
        line += (f" | seed static split {s['seed_split_s']}s = {s['seed_split_speedup']}x "
                 f"({s['seed_split_speedup_basis'].split(':')[0]}), tail {s['seed_split_tail_s']}s"
                 f" | fleet/seed on {n}: {s['fleet_over_seed_split']}x")
    met = {True: "met", False: "NOT met", None: "n/a"}[s["target_met"]]
    return line + f" | target ({s['target']}): {met}"


# --- main -------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_progress_bars()
    if args.tiny:
        # Each "GPU" process gets one CPU thread (inherited by workers and shards): with torch's
        # default, every process would take every core and they would only slow each other down.
        os.environ["OMP_NUM_THREADS"] = "1"
    started = time.perf_counter()
    gpus, work, out = resolve_gpus(args.gpus, args.tiny), Path(args.work), Path(args.out)
    n = len(gpus)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, model_info = prepare_model(args.tiny, work)
    stage1, input_path, pairs = write_data(args, work / "scaling-data")
    result = header(args, gpus, model_info, pairs)
    write_json_atomic(out, result)  # after each stage: a run cut short keeps what it measured

    texts = run_fleets(args, model_dir, work, gpus, (stage1, input_path), result, out)
    result["workload"]["fleet_tasks"] = result["fleet"]["1"]["tasks"]
    run_splits(args, model_dir, work, gpus, pairs, result, texts, started, out)

    result["identical_texts"] = compare_texts(texts, n)
    result["summary"] = summary(result, n, args.tiny)
    result["wall_s_total"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out, result)
    print(json.dumps(result["summary"], indent=2))
    print(one_line(result["summary"], "CPU (fake GPU ids)" if args.tiny else result["devices"][0]["name"]))


def compare_texts(texts: dict[str, Texts], n: int) -> dict[str, Any]:
    """Identical greedy texts between the designs that ran (information, not a target)."""
    pairs = [("fleet1", f"fleet{n}"), (f"fleet{n}", f"seed{n}"), (f"seed{n}", "seed1"),
             (f"decoder{n}", f"fleet{n}")]
    out: dict[str, Any] = {f"{a}_vs_{b}": identical(texts[a], texts[b])
                           for a, b in pairs if a != b and a in texts and b in texts}
    out["note"] = ("names: design + GPU count. The same decoder makes the same batches (fleet 1 vs N); "
                   "the seed's generate and the product decoder differ in bf16 rounding, which flips "
                   "argmaxes on random weights (bench/RESULTS.md, \"Identical greedy outputs\"); in "
                   "float32 (--tiny) they agree")
    return out


def header(args: argparse.Namespace, gpus: list[str], model_info: dict, pairs: list[dict]) -> dict[str, Any]:
    counts = pair_counts(args)
    n = len(gpus)
    result: dict[str, Any] = {
        "bench": "relations multi-GPU scaling: fleet (shared queue) vs the seed's static split",
        "command": " ".join([Path(sys.executable).name, "-m", "bench.bench_scaling", *sys.argv[1:]]),
        "tiny": args.tiny, **environment(args.tiny, gpus), "gpus": gpus, "gpu_count": n,
        "model": model_info,
        "workload": {"images": len(counts), "pairs": len(pairs),
                     "descriptions": sum(len(p["stage1_top_k"]) for p in pairs),
                     "big_images": args.big_images, "big_pairs": args.big_pairs,
                     "small_images": args.small_images, "small_pairs": args.small_pairs,
                     "pairs_per_image_in_order": counts, "image_size": list(image_size(args.tiny)),
                     "top_k": 10, "seed_shard_pairs": [len(s) for s in contiguous_shards(pairs, n)]},
        "settings": {"max_new_tokens": args.max_new_tokens, "temperature": 0.0,
                     "fleet_batch_size": args.fleet_batch_size, "chunk_pairs": CHUNK_PAIRS,
                     "workers_per_gpu": 1, "seed_batch_size": scaling_seed_split.SEED_BATCH},
        "timing": "fleet: enqueue (includes preparing the inputs) -> every item done, on workers that have "
                  "loaded the model and run a warm-up task; static split: go signal -> last shard done, "
                  "on processes that have loaded the model and run a warm-up; model loading excluded "
                  "from both (reported as *_not_timed / warm-up seconds)",
        "fleet": {}, "seed_split": {}, "decoder_split": {}, "skipped": {},
    }
    if not args.tiny:
        import torch

        result["hbm_gbs_first_gpu"] = round(hbm_bandwidth_gbs(), 1)
        torch.cuda.empty_cache()  # the parent keeps nothing on the GPU the workers use
    return result


def run_fleets(args: argparse.Namespace, model_dir: Path, work: Path, gpus: list[str],
               data: tuple[Path, Path], result: dict[str, Any], out: Path) -> dict[str, Texts]:
    """The fleet on the first GPU, then on all."""
    texts: dict[str, Texts] = {}
    for count, entry, texts[f"fleet{count}"] in scaling_fleet.fleets(args, model_dir, work, gpus, data):
        result["fleet"][str(count)] = entry
        add_scaling(entry, result["fleet"]["1"]["seconds"], count, "measured")
        # Where a speedup is lost: more GPU work for the same descriptions, or idle GPUs.
        entry["generate_s_total_vs_1gpu"] = round(
            entry["generate_s_total"] / result["fleet"]["1"]["generate_s_total"], 3)
        write_json_atomic(out, result)
        print(f"fleet on {count} GPU(s): {entry['seconds']:.2f}s, {entry['desc_per_s']} desc/s, "
              f"tail {entry['tail_s']}s, warm-up rounds {entry['warmup']['rounds']}", flush=True)
    return texts


def run_splits(args: argparse.Namespace, model_dir: Path, work: Path, gpus: list[str], pairs: list[dict],
               result: dict[str, Any], texts: dict[str, Texts], started: float, out: Path) -> None:
    """The seed's static split on N; then, if asked and if they fit, the decoder split and the 1-GPU seed."""
    n = len(gpus)
    base = {"model": str(model_dir), "device": "cpu" if args.tiny else "cuda",
            "dtype": "float32" if args.tiny else "bfloat16", "max_new_tokens": args.max_new_tokens,
            "batch_size": args.fleet_batch_size}
    split_dir = work / "scaling-split"
    seed, texts[f"seed{n}"] = scaling_seed_split.run(gpus, pairs, base, split_dir / f"seed-{n}")
    result["seed_split"][str(n)] = seed
    estimated = ("estimated: 1-GPU seconds = the sum of the N shards' busy times (the seed's per-pair "
                 "cost does not depend on the GPU count)")
    add_scaling(seed, seed["sum_busy_s"], n, estimated if n > 1 else "measured")
    write_json_atomic(out, result)
    print(f"seed static split on {n} GPU(s): {seed['seconds']:.2f}s, tail {seed['tail_s']}s", flush=True)
    overhead = seed["load_and_warmup_s_not_timed"] + 10

    fleet_n = result["fleet"][str(n)]
    decoder_estimate = overhead + 1.5 * fleet_n["seconds"]
    if _wanted("decoder_split", args.decoder_split, started, decoder_estimate, args, result):
        try:
            entry, texts[f"decoder{n}"] = scaling_decoder_split.run(gpus, pairs, base,
                                                                   split_dir / f"decoder-{n}")
            add_scaling(entry, result["fleet"]["1"]["seconds"], n,
                        "against the fleet on 1 GPU (the same decoder; on one GPU there is nothing to split)")
            # Same decoder, other scheduling (> 1: the static split is slower than the shared queue);
            # same scheduling, other decoder (the per-step speed).
            entry["scheduling_effect_split_s_over_fleet_s"] = round(entry["seconds"] / fleet_n["seconds"], 3)
            entry["decoder_effect_seed_split_s_over_this_s"] = round(seed["seconds"] / entry["seconds"], 3)
            result["decoder_split"][str(n)] = entry
            print(f"decoder static split on {n} GPU(s): {entry['seconds']:.2f}s, tail {entry['tail_s']}s",
                  flush=True)
        except (RuntimeError, TimeoutError) as exc:
            result["skipped"]["decoder_split"] = f"failed: {exc}"
        write_json_atomic(out, result)

    if n > 1 and _wanted("seed_1gpu", args.seed_1gpu, started, overhead + seed["sum_busy_s"], args, result):
        one, texts["seed1"] = scaling_seed_split.run(gpus[:1], pairs, base, split_dir / "seed-1")
        result["seed_split"]["1"] = one
        add_scaling(one, one["seconds"], 1, "measured")
        add_scaling(seed, one["seconds"], n, "measured")
        seed["one_gpu_s_estimated_from_shards"] = seed["sum_busy_s"]
        write_json_atomic(out, result)
        print(f"seed on 1 GPU: {one['seconds']:.2f}s", flush=True)


def _wanted(name: str, choice: str, started: float, estimate: float, args: argparse.Namespace,
            result: dict[str, Any]) -> bool:
    """yes: run; no: skip; auto: run only if the estimate fits in --budget-s (the reason is kept)."""
    if choice == "yes" or (choice == "auto" and fits(started, estimate, args.budget_s)):
        return True
    elapsed = time.perf_counter() - started
    result["skipped"][name] = ("not asked for" if choice == "no" else
                               f"estimated {estimate:.0f}s after {elapsed:.0f}s would pass "
                               f"--budget-s {args.budget_s:.0f}")
    return False


if __name__ == "__main__":
    main()
