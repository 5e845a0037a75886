"""The paged engine's two attention kernels on one real-run step, over launch settings.

    python3 -m bench.bench_attention_kernels --out kernels.json

One step of the real-run workload's steady state (bench/RESULTS.md, "Relations engines on the
real-run workload"): 1,018 decoding rows and 667 prefill tokens (five rows' prompts of 110
tokens and 117 tokens of an image prefix being filled), rows image after image over 11
images of 1,206 prefix tokens. A row's own keys are its 110 prompt tokens plus a point drawn
uniformly along its answer, the answer's length drawn from the real-run shape's budgets in
proportion to it (a row of a long answer is in more steps). Qwen3-VL-8B's attention shapes
(32 query heads, 8 kv heads of 128), one layer's cache of a pool of 24,000 blocks of 16 tokens
(bf16; ~the H100's pool at batch 1024), blocks scattered over it.

For each kernel (``prefix_attention.py``: the prefix part; ``paged_attention.py``: the rows'
own part with the prefix part merged) and each launch setting (keys per iteration, warps,
pipeline stages; for the prefix kernel also tokens per tile) it reports the median time of a
launch (CUDA events, 20 launches, 5 times), the bytes a launch must read at least and the rate
that makes, and the largest difference from the default setting's output (a setting that
computes something else is marked, never picked). One layer: a step runs each 36 times.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch

from bench.bench_engines import SHAPES
from workers.relations.engine.key_blocks import Launch
from workers.relations.engine.paged_attention import paged_attention
from workers.relations.engine.prefix_attention import prefix_attention
from workers.relations.engine.step_inputs import cut_tiles

HEADS, KV_HEADS, DIM = 32, 8, 128
BLOCK_SIZE, POOL_BLOCKS = 16, 24_000
PREFIX, SUFFIX = 1_206, 110
DECODE_ROWS, PREFILL_ROWS, PREFIX_CHUNK, IMAGES = 1_018, 5, 117, 11


def _own_lengths(count: int, generator: torch.Generator) -> list[int]:
    """Own keys of ``count`` decoding rows seen at a random step."""
    budgets = torch.tensor([b for image in SHAPES["realrun"].budgets() for b in image],
                           dtype=torch.float32)
    picked = budgets[torch.multinomial(budgets, count, replacement=True, generator=generator)]
    along = torch.rand(count, generator=generator)
    return (SUFFIX + (along * picked).long()).tolist()


class Step:
    """The step's fields as the kernels read them, on the device."""

    def __init__(self, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(0)
        free = torch.randperm(POOL_BLOCKS, generator=generator).tolist()

        def take(tokens: int) -> list[int]:
            return [free.pop() for _ in range(-(-tokens // BLOCK_SIZE))]

        images = [take(PREFIX) for _ in range(IMAGES)] + [take(PREFIX)]  # the last one filling
        own = _own_lengths(DECODE_ROWS, generator)
        rows = [take(length) for length in own] + [take(SUFFIX) for _ in range(PREFILL_ROWS)]
        token_row, own_used, prefix_used, image_of = [], [], [], []
        per_image = -(-DECODE_ROWS // IMAGES)
        for row, length in enumerate(own):
            token_row.append(row), own_used.append(length), prefix_used.append(PREFIX)
            image_of.append(row // per_image)
        for row in range(DECODE_ROWS, DECODE_ROWS + PREFILL_ROWS):
            token_row += [row] * SUFFIX
            own_used += range(1, SUFFIX + 1)
            prefix_used += [PREFIX] * SUFFIX
            image_of += [IMAGES - 1] * SUFFIX
        token_row += [0] * PREFIX_CHUNK
        own_used += [0] * PREFIX_CHUNK
        prefix_used += range(1, PREFIX_CHUNK + 1)
        image_of += [IMAGES] * PREFIX_CHUNK
        self.tokens = len(token_row)
        self.image_of = image_of
        self.own_bytes = (sum(own) + PREFILL_ROWS * SUFFIX) * KV_HEADS * DIM * 2 * 2
        self.prefix_bytes = (IMAGES * PREFIX + PREFIX_CHUNK) * KV_HEADS * DIM * 2 * 2

        def table(tables: list[list[int]]) -> torch.Tensor:
            width = max(len(t) for t in tables)
            return torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                dtype=torch.int32, device=device)

        self.row_tables, self.prefix_tables = table(rows), table(images)
        self.token_row = torch.tensor(token_row, dtype=torch.int32, device=device)
        self.own_used = torch.tensor(own_used, dtype=torch.int32, device=device)
        self.prefix_used = torch.tensor(prefix_used, dtype=torch.int32, device=device)
        shape = (POOL_BLOCKS * BLOCK_SIZE, KV_HEADS, DIM)
        self.keys = torch.randn(shape, dtype=torch.bfloat16, device=device)
        self.values = torch.randn(shape, dtype=torch.bfloat16, device=device)
        self.queries = torch.randn(self.tokens, HEADS, DIM, dtype=torch.bfloat16,
                                   device=device) * DIM ** -0.5

    def tiles(self, per_tile: int) -> tuple[torch.Tensor, ...]:
        """(order, tile_image, tile_start, tile_end, tile_count): the step's tokens cut into
        tiles of ``per_tile`` tokens of one image, as the engine cuts them."""
        by_image: dict[int, list[int]] = {}
        for token, image in enumerate(self.image_of):
            by_image.setdefault(image, []).append(token)
        order, tiles = cut_tiles(by_image, per_tile)
        tile_image, tile_start, tile_end = (list(column) for column in zip(*tiles))
        device = self.queries.device
        return tuple(torch.tensor(v, dtype=torch.int32, device=device) for v in
                     (order, tile_image, tile_start, tile_end, [len(tiles)]))


def _time(launch, repeats: int = 5, launches: int = 20) -> float:
    """Median milliseconds of one launch."""
    for _ in range(3):
        launch()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(launches):
            launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / launches)
    return statistics.median(times)


def _prefix_run(step: Step, launch: Launch, per_tile: int):
    tiles = step.tiles(per_tile)
    output = torch.zeros_like(step.queries)
    lse = torch.zeros(step.tokens, HEADS, dtype=torch.float32, device=step.queries.device)

    def run() -> None:
        prefix_attention(step.queries, step.keys, step.values, step.prefix_tables, tiles[0],
                         step.prefix_used, *tiles[1:], BLOCK_SIZE, output, lse, launch=launch,
                         tokens=per_tile)
    return run, output, lse


def _own_run(step: Step, launch: Launch, prefix: tuple):
    result = {}

    def run() -> None:
        result["output"], _ = paged_attention(step.queries, step.keys, step.values,
                                              step.row_tables, step.token_row, step.own_used,
                                              BLOCK_SIZE, prefix=prefix, launch=launch)
    return run, result


def _measure(run, output, reference, bytes_read: int) -> dict:
    try:
        milliseconds = _time(run)
    except Exception as exc:  # a setting past the card's shared memory or registers
        return {"error": str(exc).splitlines()[0][:200]}
    got = output() if callable(output) else output
    difference = (got.float() - reference.float()).abs().max().item() if reference is not None else 0.0
    return {"ms": round(milliseconds, 4), "GB/s": round(bytes_read / milliseconds / 1e6, 1),
            "max_difference": difference, "same": difference < 2e-2}


def sweep(step: Step) -> dict:
    results = {"prefix": [], "own": []}
    default = Launch()
    run, reference_prefix, reference_lse = _prefix_run(step, default, 16)
    run()
    for per_tile, keys, warps, stages in itertools.product((16, 32), (32, 64, 128), (4, 8),
                                                           (1, 2, 3)):
        launch = Launch(block_keys=keys, warps=warps, stages=stages)
        run, output, _ = _prefix_run(step, launch, per_tile)
        entry = {"tile_tokens": per_tile, **launch.__dict__,
                 **_measure(run, output, reference_prefix, step.prefix_bytes)}
        results["prefix"].append(entry)
        print("prefix", entry, flush=True)
    prefix = (reference_prefix, reference_lse, step.prefix_used)
    run, reference = _own_run(step, default, prefix)
    run()
    reference_own = reference["output"]
    for keys, warps, stages in itertools.product((16, 32, 64, 128), (1, 2, 4), (1, 2, 3)):
        launch = Launch(block_keys=keys, warps=warps, stages=stages)
        run, result = _own_run(step, launch, prefix)
        entry = {**launch.__dict__,
                 **_measure(run, lambda: result["output"], reference_own, step.own_bytes)}
        results["own"].append(entry)
        print("own", entry, flush=True)
    for part in ("prefix", "own"):
        good = [e for e in results[part] if e.get("same")]
        results[f"best_{part}"] = min(good, key=lambda e: e["ms"]) if good else None
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_attention_kernels.json")
    args = parser.parse_args()
    step = Step(torch.device("cuda"))
    results = {"card": torch.cuda.get_device_name(), "tokens": step.tokens,
               "own_bytes": step.own_bytes, "prefix_bytes": step.prefix_bytes,
               "default": Launch().__dict__,
               **sweep(step)}
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    for part in ("prefix", "own"):
        print(part, "best", results[f"best_{part}"])


if __name__ == "__main__":
    main()
