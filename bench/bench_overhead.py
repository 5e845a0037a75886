"""Fleet overhead: tasks that load no model, through a real Redis and a real Celery worker.

    python -m bench.bench_overhead --tasks 400 --out bench_overhead.json

Each task is a relations task for one pair whose image file does not exist: the worker
reads the items from Redis, fails to open the image and records the failure. No model is
involved, so the wall time per task is what the fleet itself costs (broker round trip,
prefork hand-off, store reads and writes, late ack).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from config import Settings, to_environ
from producer.dispatch import celery_client
from producer.embedded import EmbeddedRedis, LocalFleet
from producer.progress import wait_for_stage
from producer.relations.enqueue import enqueue_relations
from shared.messages import RELATIONS_STAGE
from shared.store import RunStore, connect


def write_inputs(directory: Path, n: int) -> tuple[Path, Path]:
    images = [{"image_id": i, "image_path": f"missing/{i}.jpg",
               "objects": [{"id": 1, "class_name": "a", "bbox": [0, 0, 10, 10]},
                           {"id": 2, "class_name": "b", "bbox": [5, 5, 20, 20]}]} for i in range(n)]
    stage1 = {str(i): [{"subject": "a", "object": "b", "predicted_predicate": "on", "similarity": 0.9}]
              for i in range(n)}
    (directory / "in.json").write_text(json.dumps(images))
    (directory / "s1.json").write_text(json.dumps({"per_image_top100_candidates": stage1}))
    return directory / "s1.json", directory / "in.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--out", default="bench_overhead.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="overhead-"))
    stage1, input_path = write_inputs(work, args.tasks)
    warm_s1, warm_in = write_inputs(Path(tempfile.mkdtemp(prefix="warm-")), 20)
    with EmbeddedRedis(work / "redis") as server:
        settings = Settings(broker_url=server.url, work_dir=work, poll_interval_seconds=0.01)
        client, app = connect(server.url), celery_client(settings)
        with LocalFleet(to_environ(settings), ["relations"], work / "workers.log", gpus="cpu") as fleet:
            timings = {}
            for name, (s1, inp) in (("warmup", (warm_s1, warm_in)), ("timed", (stage1, input_path))):
                start = time.perf_counter()
                enq = enqueue_relations(settings, app, client, s1, inp, name)
                sent = time.perf_counter()
                wait_for_stage(RunStore(client, enq.run_id), RELATIONS_STAGE, 0.01, fleet.check)
                timings[name] = (sent - start, time.perf_counter() - sent, enq.tasks_sent)
    enqueue_s, drain_s, n = timings["timed"]
    result = {"tasks": n, "enqueue_s": round(enqueue_s, 3), "drain_s": round(drain_s, 3),
              "tasks_per_s": round(n / drain_s, 1), "ms_per_task": round(1000 * drain_s / n, 2),
              "worker": "1 CPU worker, concurrency 1"}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
