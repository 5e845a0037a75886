"""Relations multi-GPU scaling: the fleet (one shared queue) against the seed's static split.

    python3 -m bench.bench_scaling --gpus 0,1 --work /tmp/bench --out bench_scaling.json
    python3 -m bench.bench_scaling --gpus all --work /tmp/bench --out bench_scaling.json
    python -m bench.bench_scaling --tiny --gpus 0,1 --work /tmp/scal-tiny --out /tmp/scal-tiny.json

One process, one model (Qwen3-VL-8B architecture, random bf16 weights, built once by
``bench.real_models.build_random_qwen3_vl_8b`` and reused from ``--work``), one skewed data set:
a few images with many pairs and many images with few (``--big-images x --big-pairs``,
``--small-images x --small-pairs``, shuffled with a fixed seed), 1280x960 images drawn like
``bench_relations.dense_workload``, 12 stage-1 candidates per pair of which top-10 are kept,
greedy decoding with ``--max-new-tokens`` (32). Stages, in this order (the JSON is rewritten
after each, so a run cut short keeps what it measured):

1. fleet on 1 GPU, then on all N: a real redis-server and the product's launcher
   (``python -m workers launch --gpus <ids>``, one worker per GPU, concurrency 1, batch 64,
   chunks of 16 pairs). Before the timed run, warm-up rounds run until every worker has
   run a big-image task and a small-image task (its model loaded, the decode graphs of every
   batch shape captured): a round has N tasks of a big image first, then N of a small one.
   It is *verified*: the done records of the warm-up runs name the worker process
   (``host:pid``), the heartbeat hash ``evalfleet:workers`` names that process's Celery node
   (``gpuK@host``); a worker that has not run both sizes gets another round (at most 6).
   Timed: enqueue -> every item done; ``generate_s_total`` sums the workers' generation
   seconds, so a lost speedup shows as more GPU work (vs 1 GPU) or as idle workers. A worker's
   finish time is when the producer first saw the last of its results (the store is polled
   every 50 ms); tail = last worker finish - first.
2. the seed's static split on N GPUs: the pairs in N contiguous shards of equal pair counts,
   one process per GPU (``CUDA_VISIBLE_DEVICES``), each running ``seed_generate`` on its shard.
   Every shard loads the model and warms up, then all start together on a go signal; each
   writes its texts and start/end times. Seconds = the last shard's end - go.
3. optional (``--decoder-split auto|yes``): the product's decoder (``RelationGenerator``, per
   image, chunks of 16 pairs, batch 64) under the same static split: against the fleet it
   shows the scheduling effect, against the seed split the per-step speed.
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
import functools
import json
import logging
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.bench_relations import write_workload
from config import Settings, to_environ
from producer.dispatch import celery_client
from producer.embedded import EmbeddedRedis, LocalFleet, die_with_parent_hook
from producer.progress import wait_for_stage
from producer.relations.enqueue import enqueue_relations
from shared.jsonio import write_json_atomic
from shared.keys import normalize_image_id, relation_key
from shared.messages import RELATIONS_STAGE, RELATIONS_TASK
from shared.relations.data import prepare_data_for_inference
from shared.store import WORKERS_KEY, RunStore, connect

log = logging.getLogger("bench.scaling")

ROOT = Path(__file__).resolve().parents[1]
TARGET_SPEEDUP_2 = 1.9
TARGET_EFFICIENCY_8 = 0.95
CHUNK_PAIRS = 16  # the product default: one task carries at most 16 pairs of one image
SEED_BATCH = 8  # the original's BATCH_SIZE
WARMUP_ROUNDS = 6
POLL_S = 0.05

Texts = dict[tuple[str, str], str]  # (pair key, predicate) -> generated description


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
    p.add_argument("--shard", help=argparse.SUPPRESS)  # internal: run one static-split shard
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
        config = "the project's tiny Qwen3-VL (workers/models/tiny.py), float32 on the CPU"
    else:
        model_dir = build_random_qwen3_vl_8b(work / "qwen3-vl-8b-random")
        config = "Qwen3-VL-8B-Instruct's configuration, random bf16 weights"
    stats = checkpoint_stats(model_dir)
    return model_dir, {"dir": str(model_dir), "config": config,
                       "parameters": sum(s["parameters"] for s in stats.values()),
                       "bytes": sum(s["bytes"] for s in stats.values()),
                       "build_or_reuse_s": round(time.perf_counter() - start, 1)}


def skewed_pair_counts(args: argparse.Namespace) -> list[int]:
    """Pairs per image: big and small images in a shuffled (fixed-seed) order."""
    counts = [args.big_pairs] * args.big_images + [args.small_pairs] * args.small_images
    random.Random(11).shuffle(counts)
    return counts


def image_size(tiny: bool) -> tuple[int, int]:
    # The tiny processor caps an image at 192x192 pixels anyway: small files keep the CPU run quick.
    return (320, 240) if tiny else (1280, 960)


def write_data(args: argparse.Namespace, directory: Path) -> tuple[Path, Path, list[dict]]:
    shutil.rmtree(directory, ignore_errors=True)
    stage1, input_path = write_workload(directory, skewed_pair_counts(args), image_size(args.tiny))
    pairs = prepare_data_for_inference(stage1, input_path, 10).pairs
    return stage1, input_path, pairs


def write_warmup_data(directory: Path, workers: int, args: argparse.Namespace) -> tuple[Path, Path]:
    """``workers`` big-image tasks (batch 64 and the remainder buckets), then as many small ones."""
    shutil.rmtree(directory, ignore_errors=True)
    big = min(args.big_pairs, CHUNK_PAIRS)
    return write_workload(directory, [big] * workers + [args.small_pairs] * workers,
                          image_size(args.tiny), seed=13)


# --- the fleet ---------------------------------------------------------------------------------

class DoneWatcher:
    """When the producer first saw each item done, in seconds after ``start``."""

    def __init__(self, store: RunStore, start: float):
        self.store, self.start = store, start
        self.seen: dict[str, float] = {}

    def poll(self) -> None:
        keys = self.store.done_keys(RELATIONS_STAGE)
        now = time.perf_counter() - self.start
        for key in keys - self.seen.keys():
            self.seen[key] = now


def wait_for_nodes(app, prefix: str, count: int, fleet: LocalFleet, timeout: float = 300) -> list[str]:
    """The Celery node names (``<prefix>gpuK@host``) once ``count`` of them answer a ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fleet.check()
        names = sorted(n for reply in app.control.ping(timeout=0.5) for n in reply if n.startswith(prefix))
        if len(names) >= count:
            return names
    raise TimeoutError(f"{count} workers named {prefix}* did not answer within {timeout}s; "
                       f"see {fleet.log_path}")


def tasks_per_node(app, prefix: str) -> dict[str, int]:
    """Celery's own count of the relations tasks each worker has run since it started."""
    stats = app.control.inspect(timeout=1).stats() or {}
    return {name: s["total"].get(RELATIONS_TASK, 0) for name, s in stats.items() if name.startswith(prefix)}


def done_by_node(client, run_id: str) -> dict[str, dict[str, dict]]:
    """node -> {key: done record}: the record names the worker process, its heartbeat the node."""
    nodes = {proc: json.loads(raw).get("node") for proc, raw in client.hgetall(WORKERS_KEY).items()}
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for key, record in RunStore(client, run_id).done(RELATIONS_STAGE).items():
        out[nodes.get(record["worker"]) or record["worker"]][key] = record
    return out


def run_and_wait(settings: Settings, app, client, fleet: LocalFleet, stage1: Path, input_path: Path,
                 run_name: str, watcher_start: float | None = None) -> tuple[Any, DoneWatcher | None]:
    """Enqueue a run and wait until every item is done; raise if any failed."""
    enq = enqueue_relations(settings, app, client, stage1, input_path, run_name)
    store = RunStore(client, enq.run_id)
    watcher = DoneWatcher(store, watcher_start) if watcher_start is not None else None

    def check() -> None:
        fleet.check()
        if watcher:
            watcher.poll()

    progress = wait_for_stage(store, RELATIONS_STAGE, POLL_S, check)
    if watcher:
        watcher.poll()
    if progress.failed:
        reasons = sorted({f["reason"] for f in store.failed(RELATIONS_STAGE).values()})
        raise RuntimeError(f"{run_name}: {progress.failed} items failed: {reasons[:3]}; see {fleet.log_path}")
    return enq, watcher


def warm_up(settings: Settings, app, client, fleet: LocalFleet, nodes: list[str], prefix: str,
            warm: tuple[Path, Path]) -> dict[str, Any]:
    """Warm-up rounds until every node has run a task of each size in the warm-up data (a big
    image and a small one; verified): between them they use every batch shape of the timed run,
    so no worker captures a CUDA graph while timed. On 2 H200s (2026-11-30) one node got only a
    big task in its one round and captured its small-batch graph in the timed run."""
    start = time.perf_counter()
    items: dict[str, int] = defaultdict(int)
    sizes: dict[str, set[int]] = defaultdict(set)  # node -> pairs of the tasks it ran
    for rounds in range(1, WARMUP_ROUNDS + 1):
        enq, _ = run_and_wait(settings, app, client, fleet, *warm, f"{prefix}warmup{rounds}")
        for node, records in done_by_node(client, enq.run_id).items():
            items[node] += len(records)
            sizes[node] |= task_sizes(records)
        needed = set().union(*sizes.values())
        missing = {n: sorted(needed - sizes[n]) for n in nodes if needed - sizes[n]}
        if not missing:
            break
        log.warning("warm-up round %d: task sizes (pairs) not run yet: %s; another round", rounds, missing)
    return {"rounds": rounds, "seconds_includes_model_load": round(time.perf_counter() - start, 2),
            "warmup_pairs_per_node": dict(items),
            "task_sizes_per_node": {n: sorted(sizes[n]) for n in nodes},
            "every_worker_warmed": not missing, "workers_not_fully_warmed": missing,
            "how": "warm-up runs (N big-image tasks first, then N small) until the done records "
                   "(worker process) mapped through the heartbeat hash (Celery node) show every node "
                   "running a task of each size"}


def task_sizes(records: dict[str, dict]) -> set[int]:
    """The pair counts of the tasks behind these done records (a warm-up task is one image)."""
    return set(Counter(r["image_id"] for r in records.values()).values())


def gpu_of(node: str) -> str:
    match = re.search(r"gpu([^@]+)@", node)
    return match.group(1) if match else node


def per_worker(nodes: list[str], by_node: dict[str, dict[str, dict]], seen: dict[str, float],
               tasks: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for node in nodes:
        records = by_node.get(node, {})
        rows.append({
            "node": node, "gpu": gpu_of(node), "tasks": tasks.get(node),
            "pairs": len(records),
            "descriptions": sum(len(r["stage2_generated"]) for r in records.values()),
            "generate_s": round(sum(r["seconds"] for r in records.values()), 2),
            # A worker that got nothing was idle from the start: it finished at 0.
            "finish_s": round(max((seen[k] for k in records), default=0.0), 2),
        })
    return rows


def run_fleet(settings: Settings, client, gpus: list[str], data: tuple[Path, Path],
              warm: tuple[Path, Path]) -> tuple[dict[str, Any], Texts]:
    """Boot the launcher on ``gpus``, warm every worker up, then time the whole workload."""
    prefix = f"g{len(gpus)}-"
    app = celery_client(settings)
    log_path = settings.work_dir / f"workers-{len(gpus)}gpu.log"
    boot = time.perf_counter()
    with LocalFleet(to_environ(settings), [settings.queue_relations], log_path,
                    gpus=",".join(gpus), name_prefix=prefix) as fleet:
        nodes = wait_for_nodes(app, prefix, len(gpus), fleet)
        boot_s = time.perf_counter() - boot
        warmup = warm_up(settings, app, client, fleet, nodes, prefix, warm)
        before = tasks_per_node(app, prefix)
        warmup["celery_tasks_per_node"] = before  # Celery's own count: a second check
        start = time.perf_counter()
        enq, watcher = run_and_wait(settings, app, client, fleet, *data, f"{prefix}timed", start)
        seconds = time.perf_counter() - start
        after = tasks_per_node(app, prefix)
    by_node = done_by_node(client, enq.run_id)
    store = RunStore(client, enq.run_id)
    done = store.done(RELATIONS_STAGE)
    texts = {(key, g["predicate"]): g["generated_description"]
             for key, rec in done.items() for g in rec["stage2_generated"]}
    rows = per_worker(nodes, by_node, watcher.seen, {n: after.get(n, 0) - before.get(n, 0) for n in nodes})
    finishes = [r["finish_s"] for r in rows]
    entry = {
        "gpus": gpus, "workers": nodes, "boot_s_not_timed": round(boot_s, 2), "warmup": warmup,
        "seconds": round(seconds, 3), "descriptions": len(texts),
        "desc_per_s": round(len(texts) / seconds, 3), "tasks": enq.tasks_sent,
        "devices_used": len(store.devices()), "per_gpu": rows,
        "generate_s_total": round(sum(r["generate_s"] for r in rows), 2),
        "tail_s": round(max(finishes) - min(finishes), 2), "worker_log": str(log_path),
        "finish_note": f"finish_s: when the producer first saw the worker's last result (polled every "
                       f"{POLL_S}s), from the enqueue",
    }
    return entry, texts


def fleet_settings(args: argparse.Namespace, model_dir: Path, work: Path) -> Settings:
    return Settings(work_dir=work, relations_model=str(model_dir), model_cache=str(work.parent / "models"),
                    temperature=0.0, max_new_tokens=args.max_new_tokens, batch_size=args.fleet_batch_size,
                    workers_per_gpu=1, poll_interval_seconds=POLL_S)


# --- the static split ----------------------------------------------------------------------

def contiguous_shards(items: list, n: int) -> list[list]:
    """``n`` contiguous slices whose sizes differ by at most one (the original's static split)."""
    q, r = divmod(len(items), n)
    cuts = [i * q + min(i, r) for i in range(n + 1)]
    return [items[a:b] for a, b in zip(cuts, cuts[1:])]


def run_split(design: str, gpus: list[str], pairs: list[dict], base: dict[str, Any],
              directory: Path) -> tuple[dict[str, Any], Texts]:
    """One shard process per GPU; all load and warm up, start on one go signal; the last end wins."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    go = directory / "go"
    procs = []
    spawn = time.perf_counter()
    for i, (gpu, shard) in enumerate(zip(gpus, contiguous_shards(pairs, len(gpus)))):
        spec = {**base, "design": design, "gpu": gpu, "pairs": shard, "go": str(go),
                "ready": str(directory / f"ready{i}"), "out": str(directory / f"shard{i}.json")}
        spec_path = directory / f"spec{i}.json"
        spec_path.write_text(json.dumps(spec))
        with open(directory / f"shard{i}.log", "wb") as logfile:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.bench_scaling", "--shard", str(spec_path)], cwd=ROOT,
                env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}, stdout=logfile,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent_hook()))
    _wait_ready(procs, directory)
    ready_s = time.perf_counter() - spawn
    (directory / "go.tmp").write_text(str(time.time()))
    os.rename(directory / "go.tmp", go)
    go_at = float(go.read_text())
    for i, proc in enumerate(procs):
        if proc.wait() != 0:
            log_tail = _tail(directory / f"shard{i}.log")
            raise RuntimeError(f"{design} shard {i} exited with {proc.returncode}: {log_tail}")
    shards = [json.loads((directory / f"shard{i}.json").read_text()) for i in range(len(procs))]
    texts = {(k, p): t for s in shards for k, p, t in s.pop("texts")}
    rows = [{**s, "finish_s": round(s["end"] - go_at, 2), "busy_s": round(s["end"] - s["start"], 2)}
            for s in shards]
    finishes = [r["finish_s"] for r in rows]
    seconds = max(finishes)
    entry = {"gpus": gpus, "seconds": round(seconds, 3), "descriptions": len(texts),
             "desc_per_s": round(len(texts) / seconds, 3),
             "load_and_warmup_s_not_timed": round(ready_s, 1), "per_gpu": rows,
             "tail_s": round(max(finishes) - min(finishes), 2),
             "sum_busy_s": round(sum(r["busy_s"] for r in rows), 2)}
    return entry, texts


def _wait_ready(procs: list[subprocess.Popen], directory: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not all((directory / f"ready{i}").exists() for i in range(len(procs))):
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                for other in procs:
                    if other.poll() is None:
                        other.kill()
                raise RuntimeError(f"shard {i} exited with {proc.returncode} before it was ready: "
                                   f"{_tail(directory / f'shard{i}.log')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"shards not ready within {timeout}s; see {directory}")
        time.sleep(0.1)


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


# --- a shard process (``--shard SPEC``) ----------------------------------------------------------

def shard_main(spec_path: str) -> None:
    """Load the model, warm up, signal ready, wait for go, generate the shard, write the result."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    dtype, device = getattr(torch, spec["dtype"]), spec["device"]
    pairs = spec["pairs"]
    start = time.perf_counter()
    runner = _seed_runner if spec["design"] == "seed" else _decoder_runner
    generate = runner(spec, dtype, device)
    load_s = time.perf_counter() - start
    generate(_warmup_pairs(pairs, spec["design"]))
    Path(spec["ready"]).write_text("ready")
    deadline = time.monotonic() + 900
    while not Path(spec["go"]).exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal within 900s")
        time.sleep(0.002)
    begin = time.time()
    texts = generate(pairs)
    end = time.time()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = {"gpu": spec["gpu"], "device": name, "pairs": len(pairs), "descriptions": len(texts),
              "images": len({normalize_image_id(p["image_id"]) for p in pairs}),
              "load_s": round(load_s, 2), "start": begin, "end": end,
              "texts": [[k, p, t] for (k, p), t in texts.items()]}
    Path(spec["out"]).write_text(json.dumps(result, ensure_ascii=False))


def _warmup_pairs(pairs: list[dict], design: str) -> list[dict]:
    """The seed: one pair (as bench_relations). The decoder: the largest and the smallest image
    group, so the batch-64 storage and the remainder buckets are captured before the go."""
    if design == "seed" or not pairs:
        return pairs[:1]
    groups = _image_chunks(pairs)
    return max(groups, key=len) + min(groups, key=len)


def _seed_runner(spec: dict, dtype, device: str):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from bench.seed_relations import seed_generate

    processor = AutoProcessor.from_pretrained(spec["model"])
    model = AutoModelForImageTextToText.from_pretrained(spec["model"], dtype=dtype, device_map=device)
    return lambda pairs: seed_generate(processor, model, pairs, spec["max_new_tokens"], SEED_BATCH)[0]


def _decoder_runner(spec: dict, dtype, device: str):
    import torch

    from workers.models.loading import load_vlm
    from workers.relations.generator import RelationGenerator

    processor, model = load_vlm(spec["model"], revision="", dtype=dtype, device=torch.device(device))
    generator = RelationGenerator(processor, model, max_new_tokens=spec["max_new_tokens"], temperature=0.0)
    return lambda pairs: _decode_by_image(generator, pairs)


def _image_chunks(pairs: list[dict]) -> list[list[dict]]:
    """As the producer sends tasks: per image, at most CHUNK_PAIRS pairs each."""
    by_image: dict[str, list[dict]] = {}
    for pair in pairs:
        by_image.setdefault(normalize_image_id(pair["image_id"]), []).append(pair)
    return [group[i:i + CHUNK_PAIRS] for group in by_image.values() for i in range(0, len(group), CHUNK_PAIRS)]


def _decode_by_image(generator, pairs: list[dict]) -> Texts:
    """What a worker's task does (workers/tasks/relations.py): one image, all its prompts, batched."""
    from shared.images import open_image
    from shared.relations.prompt import build_relation_prompt

    out: Texts = {}
    for chunk in _image_chunks(pairs):
        image = open_image(chunk[0]["image_path"])
        jobs = [(relation_key(p["image_id"], p["subject"], p["object"]), t["predicate"],
                 build_relation_prompt(p["subject_obj"], p["object_obj"], t["predicate"],
                                       image.width, image.height))
                for p in chunk for t in p["stage1_top_k"]]
        texts = generator.generate(image, [prompt for _, _, prompt in jobs], seed=0)
        out.update({(key, predicate): text for (key, predicate, _), text in zip(jobs, texts)})
    return out


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


def quiet_progress_bars() -> None:
    """The wait redraws its bar on every 50 ms poll; workers' and shards' loading bars too."""
    import producer.progress

    producer.progress.tqdm = functools.partial(producer.progress.tqdm, disable=True)
    os.environ["TQDM_DISABLE"] = "1"  # inherited by the workers and the shard processes


# --- main -------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    if args.shard:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s shard %(message)s")
        shard_main(args.shard)
        return
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
                   "argmaxes on random weights (RESULTS.md section 2); in float32 (--tiny) they agree")
    return out


def header(args: argparse.Namespace, gpus: list[str], model_info: dict, pairs: list[dict]) -> dict[str, Any]:
    counts = skewed_pair_counts(args)
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
                     "workers_per_gpu": 1, "seed_batch_size": SEED_BATCH},
        "timing": "fleet: enqueue (includes preparing the inputs) -> every item done, on workers that have "
                  "loaded the model and run a warm-up task; static split: go signal -> last shard done, "
                  "on processes that have loaded the model and run a warm-up; model loading excluded "
                  "from both (reported as *_not_timed / warm-up seconds)",
        "fleet": {}, "seed_split": {}, "decoder_split": {}, "skipped": {},
    }
    if not args.tiny:
        import torch

        from bench.real_models import hbm_bandwidth_gbs

        result["hbm_gbs_first_gpu"] = round(hbm_bandwidth_gbs(), 1)
        torch.cuda.empty_cache()  # the parent keeps nothing on the GPU the workers use
    return result


def run_fleets(args: argparse.Namespace, model_dir: Path, work: Path, gpus: list[str],
               data: tuple[Path, Path], result: dict[str, Any], out: Path) -> dict[str, Texts]:
    """The fleet on the first GPU, then on all; both in one embedded Redis (fresh each call)."""
    fleet_dir = work / "scaling-fleet"
    shutil.rmtree(fleet_dir, ignore_errors=True)
    texts: dict[str, Texts] = {}
    with EmbeddedRedis(fleet_dir / "redis") as server:
        settings = fleet_settings(args, model_dir, fleet_dir).replace(broker_url=server.url)
        client = connect(server.url)
        for count in sorted({1, len(gpus)}):
            warm = write_warmup_data(work / f"scaling-warmup-{count}", count, args)
            entry, texts[f"fleet{count}"] = run_fleet(settings, client, gpus[:count], data, warm)
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
    seed, texts[f"seed{n}"] = run_split("seed", gpus, pairs, base, split_dir / f"seed-{n}")
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
            entry, texts[f"decoder{n}"] = run_split("decoder", gpus, pairs, base, split_dir / f"decoder-{n}")
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
        one, texts["seed1"] = run_split("seed", gpus[:1], pairs, base, split_dir / "seed-1")
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
