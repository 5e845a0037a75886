"""The static split a multi-GPU run is held against: the pairs cut into N contiguous shards of
equal pair counts, one process per GPU (``CUDA_VISIBLE_DEVICES``), each generating its shard.

Every shard process loads its model and warms up, then all start together on a go signal (a
file); each writes its texts and its start and end times. Seconds = the last shard's end - go.
A design (the seed loop, the product's decoder) is a module runnable as
``python -m MODULE SPEC`` that serves one shard with ``serve_shard``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.harness import Texts
from shared.keys import normalize_image_id
from shared.processes import die_with_parent_hook

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 900

Generate = Callable[[list[dict]], Texts]


def contiguous_shards(items: list, n: int) -> list[list]:
    """``n`` contiguous slices whose sizes differ by at most one (the original's static split)."""
    q, r = divmod(len(items), n)
    cuts = [i * q + min(i, r) for i in range(n + 1)]
    return [items[a:b] for a, b in zip(cuts, cuts[1:])]


def run_split(module: str, gpus: list[str], pairs: list[dict], base: dict[str, Any],
              directory: Path) -> tuple[dict[str, Any], Texts]:
    """One ``python -m module`` shard process per GPU; all load and warm up, start on one go
    signal; the last end wins. ``base``: what every shard's spec holds (model, device, dtype...)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    spawn = time.perf_counter()
    procs = [_start_shard(module, i, gpu, shard, base, directory)
             for i, (gpu, shard) in enumerate(zip(gpus, contiguous_shards(pairs, len(gpus))))]
    _wait_ready(procs, directory)
    ready_s = time.perf_counter() - spawn
    go = directory / "go"
    (directory / "go.tmp").write_text(str(time.time()))
    os.rename(directory / "go.tmp", go)
    go_at = float(go.read_text())
    for i, proc in enumerate(procs):
        if proc.wait() != 0:
            raise RuntimeError(f"{module} shard {i} exited with {proc.returncode}: "
                               f"{_tail(directory / f'shard{i}.log')}")
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


def _start_shard(module: str, i: int, gpu: str, shard: list[dict], base: dict[str, Any],
                 directory: Path) -> subprocess.Popen:
    spec = {**base, "gpu": gpu, "pairs": shard, "go": str(directory / "go"),
            "ready": str(directory / f"ready{i}"), "out": str(directory / f"shard{i}.json")}
    spec_path = directory / f"spec{i}.json"
    spec_path.write_text(json.dumps(spec))
    with open(directory / f"shard{i}.log", "wb") as logfile:
        return subprocess.Popen([sys.executable, "-m", module, str(spec_path)], cwd=ROOT,
                                env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu}, stdout=logfile,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent_hook())


def _wait_ready(procs: list[subprocess.Popen], directory: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not all((directory / f"ready{i}").exists() for i in range(len(procs))):
        for i, proc in enumerate(procs):
            if proc.poll() is not None:
                for other in procs:
                    if other.poll() is None:
                        other.kill()
                raise RuntimeError(f"shard {i} exited with {proc.returncode} before it was ready: "
                                   f"{_tail(directory / f'shard{i}.log')}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"shards not ready within {READY_TIMEOUT_S}s; see {directory}")
        time.sleep(0.1)


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


# --- in a shard process ---------------------------------------------------------------------------

def serve_shard(spec_path: str, load: Callable[[dict, Any, str], Generate],
                warmup_pairs: Callable[[list[dict]], list[dict]]) -> None:
    """Load the model (``load`` -> generate), warm up on ``warmup_pairs`` of the shard, signal
    ready, wait for go, generate the shard, write the result."""
    import torch

    spec = json.loads(Path(spec_path).read_text())
    dtype, device = getattr(torch, spec["dtype"]), spec["device"]
    pairs = spec["pairs"]
    start = time.perf_counter()
    generate = load(spec, dtype, device)
    load_s = time.perf_counter() - start
    generate(warmup_pairs(pairs))
    Path(spec["ready"]).write_text("ready")
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not Path(spec["go"]).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no go signal within {READY_TIMEOUT_S}s")
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
