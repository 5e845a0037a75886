"""The text layers over fixed buffers, replayed as one CUDA graph per bucket of step sizes.

Eager, a step launches ~1,500 kernels from Python (36 layers of projections, compiled
elementwise regions and two attention kernels); at ~1,000 rows the host took 69.5 ms to launch
27.8 ms of GPU work (bench/RESULTS.md). A graph captured once per bucket (step token counts
padded up to 16, 32, ..., 256, then multiples of 256) replays them in one launch. Everything
the layers read lives in buffers of fixed addresses: the step's fields
(``StepInputs``), its input embeddings, the deepstack features added at the image tokens, the
KV cache; the final hidden states land in ``output``. A graph holds the cache's address: it
lives as long as the cache storage does (``PagedEngine`` makes a new ``StaticStep`` with it).

Before a bucket's capture, the step runs eagerly twice on a side stream (compiles, Triton's
first launches, cuBLAS's workspaces: nothing may be set up during a capture); those runs
are the step itself, writing the same keys to the same slots as its replay does.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from workers.relations.decoding import triton_attention_runs
from workers.relations.engine.attention import PagedAttention
from workers.relations.engine.kv_cache import KVCache
from workers.relations.engine.qwen3_vl import Qwen3VL
from workers.relations.engine.step_inputs import Capacity, StepInputs

logger = logging.getLogger(__name__)


def kernels_run(model: Qwen3VL) -> bool:
    """Whether the step's Triton kernels run for ``model``: CUDA, bf16/fp16, a head size that
    is a power of two, and Triton installed. Also on the CPU under Triton's interpreter
    (``TRITON_INTERPRET=1``: the tests run the kernels' path there, eagerly)."""
    if os.environ.get("TRITON_INTERPRET") == "1" and model.device.type == "cpu":
        return True
    return triton_attention_runs(model.device, model.dtype, model.head_dim)


class StaticStep:
    """One engine's step buffers and graphs over ``cache``, for steps up to ``capacity``."""

    def __init__(self, model: Qwen3VL, cache: KVCache, capacity: Capacity, *, graphs: bool) -> None:
        self.model, self.cache, self.capacity = model, cache, capacity
        self.use_graphs = graphs and model.device.type == "cuda"
        device, dtype = model.device, model.dtype
        self.inputs = StepInputs(capacity, device)
        self.embeds = torch.zeros(capacity.tokens, model.hidden_size, dtype=dtype, device=device)
        self.deepstack = torch.zeros(model.deepstack_layers, capacity.tokens, model.hidden_size,
                                     dtype=dtype, device=device)
        self.output = torch.zeros(capacity.tokens, model.hidden_size, dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._pool = None
        self.capture_seconds = 0.0

    def holds(self, cache: KVCache, capacity: Capacity) -> bool:
        return cache is self.cache and self.capacity.holds(capacity)

    def run(self, bucket: int) -> torch.Tensor:
        """The final hidden states (bucket, hidden) of the step in the buffers."""
        graph = self.graphs.get(bucket)
        if graph is None and self.use_graphs:
            graph = self._capture_or_none(bucket)
        if graph is None:
            self._forward(bucket)
        else:
            graph.replay()
        return self.output[:bucket]

    def _capture_or_none(self, bucket: int) -> torch.cuda.CUDAGraph | None:
        """The bucket's graph; None, and eager steps from then on, if this model's layers
        cannot be captured (an operation that waits for the host, such as a loop over
        experts that asks which were picked)."""
        try:
            return self._capture(bucket)
        except RuntimeError as exc:
            logger.warning("the paged engine's steps run eagerly: capturing a CUDA graph "
                           "failed (%s)", str(exc).splitlines()[0][:200])
            self.use_graphs = False
            return None

    def _forward(self, bucket: int) -> None:
        fields = self.inputs.views(bucket)
        attention = PagedAttention(self.cache.keys, self.cache.values, fields,
                                   tiles=self.capacity.tiles_for(bucket),
                                   block_size=self.cache.block_size)
        deepstack = [layer[:bucket] for layer in self.deepstack] or None
        hidden = self.model.forward(self.embeds[:bucket], fields["positions"].long(), attention,
                                    deepstack)
        self.output[:bucket].copy_(hidden)

    def _capture(self, bucket: int) -> torch.cuda.CUDAGraph:
        started = time.perf_counter()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(bucket)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            self._forward(bucket)
        self._pool = graph.pool()  # the buckets' graphs share one memory pool
        self.graphs[bucket] = graph
        self.capture_seconds += time.perf_counter() - started
        logger.info("captured the paged engine's step of %d tokens as a CUDA graph (%.2f s)",
                    bucket, time.perf_counter() - started)
        return graph

