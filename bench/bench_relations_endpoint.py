"""The relations job's endpoint path against `transformers serve` on the tiny Qwen3-VL (CPU):
requests per second and what the path adds per request and per pair over bare HTTP posts of
the same requests, and how many requests it keeps in flight.

    PYTHONPATH=$PWD python -m bench.bench_relations_endpoint [--concurrency 1 4 8] [--out FILE]

Both paths send the sample's prompts (one chat completion each, max_tokens 8, greedy) with the
same number of threads: ``bare`` posts the JSON with urllib; ``endpoint`` is
workers/relations/endpoint.py through workers/endpoints/ (request threads, timeouts, answer
checks). The server's own time is in both; the difference is the path's overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from config import TINY_MODEL
from producer.relations.sample import write_relations_sample
from shared.relations.data import prepare_data_for_inference
from shared.relations.prompt import build_relation_prompt
from tests.transformers_serve import served
from tests.waiting import wait_until
from workers.endpoints.client import Completion, EndpointClient
from workers.relations.endpoint import EndpointRelations, image_data_url

MAX_TOKENS = 8


class CountingClient(EndpointClient):
    """The endpoint client, counting the requests in flight (the most at once)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lock, self.in_flight, self.most = threading.Lock(), 0, 0

    def send(self, request) -> Completion:
        with self.lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            return super().send(request)
        finally:
            with self.lock:
                self.in_flight -= 1


def sample_prompts(directory: Path) -> tuple[list[str], list[list[str]], int]:
    """(image files, each one's prompts, pairs) of the relations sample."""
    by_image: dict[str, list[str]] = {}
    pairs = prepare_data_for_inference(*write_relations_sample(directory), 10).pairs
    for pair in pairs:
        with Image.open(pair["image_path"]) as image:
            size = image.size
        by_image.setdefault(pair["image_path"], []).extend(
            build_relation_prompt(pair["subject_obj"], pair["object_obj"], entry["predicate"], *size)
            for entry in pair["stage1_top_k"])
    return list(by_image), list(by_image.values()), len(pairs)


def bare(url: str, relations: EndpointRelations, paths, prompts, concurrency: int) -> float:
    """Seconds to post every request with urllib, ``concurrency`` at a time."""
    bodies = [json.dumps({"model": relations.client.model, **relations.request(image_data_url(path), prompt, 0)}).encode()
              for path, image_prompts in zip(paths, prompts) for prompt in image_prompts]

    def post(body: bytes) -> bytes:
        request = urllib.request.Request(f"{url}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.read()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies))
    return time.perf_counter() - started


def through_endpoint(relations: EndpointRelations, paths, prompts) -> tuple[float, int]:
    """(seconds, failures) of the endpoint path over every prompt."""
    failures = []

    def on_answer(image: int, index: int, answer) -> None:
        if answer.failure is not None:
            failures.append(answer.failure)

    seeds = [[0] * len(group) for group in prompts]
    started = time.perf_counter()
    relations.describe(paths, prompts, seeds, on_answer)
    return time.perf_counter() - started, len(failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--repeat", type=int, default=5, help="times the sample's images are sent (more requests, less noise)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/bench_relations_endpoint.json"))
    args = parser.parse_args()
    from workers.models import resolve_model_path

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(resolve_model_path(TINY_MODEL, Path(tmp) / "models"))
        paths, prompts, pairs = sample_prompts(Path(tmp) / "sample")
        paths, prompts, pairs = paths * args.repeat, prompts * args.repeat, pairs * args.repeat
        requests = sum(map(len, prompts))
        rows = []
        with served(model_dir, Path(tmp) / "serve.log", wait_until) as url:
            for concurrency in args.concurrency:
                client = CountingClient(url, model_dir, what="the relations endpoint", setting="RELATIONS_ENDPOINT",
                                        api_key_env="", concurrency=concurrency, timeout_seconds=300, max_retries=0)
                relations = EndpointRelations(client, max_new_tokens=MAX_TOKENS, temperature=0)
                through_endpoint(relations, paths[:1], [prompts[0][:concurrency]])  # warm: connections, threads
                bare_s = bare(url, relations, paths, prompts, concurrency)
                endpoint_s, failed = through_endpoint(relations, paths, prompts)
                rows.append({"concurrency": concurrency, "requests": requests, "pairs": pairs, "failed": failed,
                             "bare_seconds": round(bare_s, 3), "endpoint_seconds": round(endpoint_s, 3),
                             "bare_requests_per_s": round(requests / bare_s, 2),
                             "endpoint_requests_per_s": round(requests / endpoint_s, 2),
                             "overhead_ms_per_request": round((endpoint_s - bare_s) / requests * 1000, 2),
                             "overhead_ms_per_pair": round((endpoint_s - bare_s) / pairs * 1000, 2),
                             "most_in_flight": client.most})
                print(json.dumps(rows[-1]), flush=True)
    args.out.write_text(json.dumps({"max_tokens": MAX_TOKENS, "server": "transformers serve, tiny Qwen3-VL, CPU",
                                    "cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
