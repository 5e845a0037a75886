"""A relations run of real-run size through the one-command fleet on this machine (no GPU):
the tiny model, one new token, one local CPU worker. It times the run, samples the peaks of
the producer, Redis and the worker processes, kills every process of the run at once part way
(``--kill-at`` pairs) and runs the same command again, then checks what a user relies on:
every pair done once, no generation redone, no message of the run left in a queue.

    python3 -m bench.ops_realrun --dir /tmp/ops --images 2000 --kill-at 6000 --out ops.json

The inputs are drawn deterministically: per image 10 subject-object pairs x 10 stage-1
candidates, one pair in five with a "no relation" candidate among them (dropped), so ~9.8
prompts a pair, like a real stage-1 file's top 100.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import psutil
from PIL import Image, ImageDraw

from config import Settings, load_settings
from config.celery import celery_config
from producer.embedded import EmbeddedRedis, running_server_url
from producer.kombu_redis import queue_depths
from shared.messages import RELATIONS_STAGE
from shared.store import RUNS_KEY, RunStore, connect

CLASSES = ["man", "woman", "dog", "cat", "table", "cup", "laptop", "lamp", "tree", "car", "hat",
           "shirt", "bag", "umbrella", "train", "track", "window", "door", "grass", "sky"]
PREDICATES = ["on", "near", "has", "holding", "wearing", "behind", "under", "in front of",
              "next to", "above", "beside", "part of", "attached to", "in"]


def write_inputs(directory: Path, images: int, pairs: int = 10, candidates: int = 10,
                 seed: int = 0) -> tuple[Path, Path]:
    """The stage-1 file and the input file, and one PNG per image."""
    rng = random.Random(seed)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    records, stage1 = [], {}
    for number in range(images):
        image_id = 1_000_000 + number
        width, height = rng.choice([(640, 480), (500, 375), (800, 600), (480, 640), (1024, 768)])
        names = rng.sample(CLASSES, 5)
        boxes = {}
        for name in names:
            x1, y1 = rng.randrange(width // 2), rng.randrange(height // 2)
            boxes[name] = [x1, y1, x1 + rng.randrange(20, width // 2), y1 + rng.randrange(20, height // 2)]
        path = directory / "images" / f"{image_id}.png"
        if not path.exists():
            img = Image.new("RGB", (width, height), "beige")
            draw = ImageDraw.Draw(img)
            for box in boxes.values():
                draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)), outline="black")
            img.save(path)
        records.append({"image_id": image_id, "image_path": f"images/{image_id}.png",
                        "objects": [{"id": i + 1, "class_name": n, "bbox": boxes[n]} for i, n in enumerate(names)],
                        "relations": []})
        ordered = [(s, o) for s in names for o in names if s != o]
        rows = []
        for subject, object_ in rng.sample(ordered, pairs):
            predicates = rng.sample(PREDICATES, candidates)
            if rng.random() < 0.2:
                predicates[rng.randrange(candidates)] = "no relation"
            for rank, predicate in enumerate(predicates):
                rows.append({"subject": subject, "object": object_, "predicted_predicate": predicate,
                             "similarity": round(0.95 - 0.05 * rank - rng.random() * 0.02, 4),
                             "has_gt": False, "gt_predicates": []})
        rng.shuffle(rows)
        stage1[str(image_id)] = rows
    stage1_path, input_path = directory / "recall_results_ops.json", directory / "ops_images.json"
    stage1_path.write_text(json.dumps({"per_image_top100_candidates": stage1}, indent=1))
    input_path.write_text(json.dumps(records, indent=1))
    return stage1_path, input_path


class Peaks:
    """Peak resident memory of the producer, its redis-server and the worker processes."""

    def __init__(self) -> None:
        self.mb = {"producer": 0.0, "redis": 0.0, "worker_process_max": 0.0, "workers_total": 0.0}

    def sample(self, producer: psutil.Process) -> list[psutil.Process]:
        try:
            family = producer.children(recursive=True)
            self._keep("producer", producer.memory_info().rss)
        except psutil.NoSuchProcess:
            return []
        workers = 0
        for proc in family:
            try:
                rss, name = proc.memory_info().rss, proc.name()
            except psutil.NoSuchProcess:
                continue
            if "redis" in name:
                self._keep("redis", rss)
            else:
                self._keep("worker_process_max", rss)
                workers += rss
        self._keep("workers_total", workers)
        return family

    def _keep(self, name: str, rss: int) -> None:
        self.mb[name] = max(self.mb[name], round(rss / 2**20, 1))


def done_pairs(redis_dir: Path) -> int | None:
    """Pairs done so far, read from the running run's Redis (None before it answers)."""
    url = running_server_url(redis_dir, timeout=1)
    if url is None:
        return None
    client = connect(url)
    try:
        runs = client.smembers(RUNS_KEY)
        return sum(RunStore(client, run).progress(RELATIONS_STAGE).done for run in runs)
    except Exception:
        return None


def run_once(command: list[str], env: dict[str, str], log: Path, kill_at: int | None,
             redis_dir: Path) -> dict:
    """One attempt of the command; with ``kill_at``, every process of it is SIGKILLed at once
    when that many pairs are done."""
    peaks = Peaks()
    started = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    producer = psutil.Process(proc.pid)
    killed_at = None
    while proc.poll() is None:
        family = peaks.sample(producer)
        if kill_at is not None and (done := done_pairs(redis_dir)) is not None and done >= kill_at:
            killed_at = done
            for p in [producer, *family]:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            proc.wait()
            break
        time.sleep(1.0)
    return {"exit_code": proc.returncode, "seconds": round(time.perf_counter() - started, 1),
            "killed_at_pairs": killed_at, "peak_mb": peaks.mb}


def final_state(settings: Settings, redis_dir: Path) -> dict:
    """The finished run as Redis keeps it: pairs, the workers' own counters, queued messages."""
    with EmbeddedRedis(redis_dir) as server:
        client = connect(server.url)
        [run] = client.smembers(RUNS_KEY)
        store = RunStore(client, run)
        options = dict(celery_config(settings)["broker_transport_options"])
        return {"run": run, "progress": asdict(store.progress(RELATIONS_STAGE)),
                "stats": store.stats(RELATIONS_STAGE),
                "queues": queue_depths(client, [settings.queue_relations], options)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--kill-at", type=int, default=6000, help="pairs done when every process is killed")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    stage1, inputs = write_inputs(args.dir, args.images)
    result: dict = {"images": args.images, "inputs_seconds": round(time.perf_counter() - t0, 1),
                    "stage1_mb": round(stage1.stat().st_size / 2**20, 1)}
    work = args.dir / "work"
    env = {**os.environ, "EVALFLEET_WORK_DIR": str(work), "EVALFLEET_MAX_NEW_TOKENS": "1"}
    output = args.dir / "stage2_generated_results.json"
    command = [sys.executable, "-m", "producer", "run", "relations", "--stage1", str(stage1),
               "--input", str(inputs), "--output", str(output)]
    log = args.dir / "terminal.log"
    result["killed_attempt"] = run_once(command, env, log, args.kill_at, work / "redis")
    result["resumed_attempt"] = run_once(command, env, log, None, work / "redis")
    report = json.loads(output.read_text())
    result["report"] = {"results": len(report["results"]), "failed": len(report["failed"]),
                        "prompts": sum(len(r["stage2_generated"]) for r in report["results"]),
                        "distinct_pairs": len({(r["image_id"], r["subject"], r["object"])
                                               for r in report["results"]})}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "producer", "report", "relations", "--run",
                    final_state(load_settings(env), work / "redis")["run"], "--output",
                    str(args.dir / "report_again.json")], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result["report_command_seconds"] = round(time.perf_counter() - started, 1)
    result["final"] = final_state(load_settings(env), work / "redis")
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
