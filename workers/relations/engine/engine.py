"""The paged engine's entry point: one call's prompts about several images, as a loop of
schedule -> run -> postprocess over a paged KV cache (the parts: workers/relations/engine/)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from shared.relations.run_settings import LOCAL_ENGINE
from workers.relations.decoding import PhaseClock, prompt_budget
from workers.relations.engine.kv_cache import (
    BLOCK_SIZE,
    BlockPool,
    KVCache,
    bytes_per_block,
    pool_blocks,
)
from workers.relations.engine.model_runner import ModelRunner
from workers.relations.engine.qwen3_vl import Qwen3VL
from workers.relations.engine.scheduler import MAX_LOADED_IMAGES, Row, Scheduler
from workers.relations.engine.static_step import StaticStep, kernels_run
from workers.relations.engine.step_inputs import Capacity
from workers.relations.image_inputs import ImageInputs

logger = logging.getLogger(__name__)

# Prefill tokens (rows' suffixes, image prefixes) a step runs beside its rows' next tokens.
STEP_TOKENS = 2048


@dataclass
class EngineStats:
    """What the last ``generate`` did, for logs and benchmarks."""

    steps: int = 0
    rows: int = 0  # the most rows at once (EVALFLEET_MAX_BATCH, fewer for fewer prompts)
    peak_rows: int = 0  # the most rows that ran at once (fewer than ``rows`` if blocks ran out)
    live_row_steps: int = 0  # tokens picked for rows
    mixed_steps: int = 0  # steps that also prefilled (the rest decoded running rows only)
    # Tokens the steps ran: running rows' next tokens, rows' prefill, image prefixes.
    tokens: dict[str, int] = field(default_factory=lambda: {"decode": 0, "rows": 0, "prefixes": 0})
    prefills: int = 0  # image prefixes
    preemptions: int = 0
    blocks: int = 0
    attention: str = ""  # the step's backend: "kernels" (+ " and CUDA graphs") or "reference"
    capture_seconds: float = 0.0  # spent capturing CUDA graphs in this call
    seconds: float = 0.0
    # Seconds per phase: images (waited for the processor), vision (the vision tower), decode
    # (steps of running rows only), mixed (steps that also prefilled).
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def occupancy(self) -> float:
        """Share of the steps' rows that picked a token."""
        return self.live_row_steps / max(1, self.steps * self.rows)


class PagedEngine:
    """Generates answers to rendered prompts over several images (``generate``; ``stats`` of
    the last call, ``release`` and ``cache_bytes`` for the worker's memory pool).

    Keys and values live in blocks of ``block_size`` tokens; each step runs every running
    row's next token and up to ``step_tokens`` prefill tokens in one forward. On CUDA in
    bf16/fp16 a step is replayed from a CUDA graph of its bucket (``graphs``; False runs the
    same kernels eagerly), elsewhere its attention is the torch reference. There, each step
    is planned and queued while the last one runs (``plan_ahead``), its rows' new tokens taken
    from the device: 13% more tokens a second on an H100 (bench/RESULTS.md).
    """

    name = LOCAL_ENGINE  # in the workers' log and the report's summary

    def __init__(self, processor: ProcessorMixin, model: PreTrainedModel, *,
                 block_size: int = BLOCK_SIZE, step_tokens: int = STEP_TOKENS,
                 graphs: bool = True, plan_ahead: bool = True) -> None:
        self.processor, self.model = processor, model
        self.adapter = Qwen3VL(processor, model)
        self.block_size, self.step_tokens, self.graphs = block_size, step_tokens, graphs
        self.plan_ahead = plan_ahead
        self.stats = EngineStats()
        self._cache: KVCache | None = None
        self._static: StaticStep | None = None

    @property
    def cache_bytes(self) -> int:
        """Device bytes the cache holds now (0 after ``release``)."""
        return 0 if self._cache is None else self._cache.bytes

    def release(self) -> None:
        """Free the cache and the graphs over it (the next generate makes them again)."""
        self._static = None
        self._cache = None

    def generate(self, images: list[Image.Image], texts: list[list[str]], *, max_batch: int,
                 cache_bytes: int | None = None, max_new_tokens: int | list[list[int]],
                 temperature: float, seed: int,
                 on_done: Callable[[int, int, list[int]], None] | None = None,
                 ) -> list[list[list[int]]]:
        """New token ids for every text of every image, each up to and including its first eos.

        ``texts[i]`` are rendered prompts about ``images[i]``; ``max_new_tokens`` is one budget
        for all or one per text. At most ``max_batch`` rows run at once, fewer while their
        blocks do not fit ``cache_bytes``. Greedy at temperature 0, else sampled from a
        generator seeded with ``seed``. ``on_done(image, index, tokens)`` as each answer ends.
        """
        started = time.perf_counter()
        rows, prefix_texts = self._rows(texts, max_new_tokens)
        self.stats = EngineStats()
        clock = PhaseClock(self.model.device)
        if rows:
            with torch.inference_mode():
                self._run(images, prefix_texts, rows, max_batch, cache_bytes, temperature, seed,
                          clock, on_done)
        self.stats.phases = clock.seconds()
        self.stats.seconds = time.perf_counter() - started
        result: list[list[list[int]]] = [[] for _ in texts]
        for row in rows:
            result[row.image].append(row.output)
        return result

    def _rows(self, texts: list[list[str]], max_new_tokens) -> tuple[list[Row], dict[int, str]]:
        rows, prefixes = [], {}
        for image, image_texts in enumerate(texts):
            if not image_texts:
                continue
            prefixes[image], suffixes = self.adapter.split(image_texts)
            for index, suffix in enumerate(suffixes):
                rows.append(Row(image=image, index=index, suffix=suffix,
                                max_new_tokens=prompt_budget(max_new_tokens, image, index)))
        return rows, prefixes

    def _run(self, images, prefix_texts, rows, max_batch, cache_bytes, temperature, seed, clock,
             on_done) -> None:
        wanted = {image: images[image] for image in prefix_texts}
        # Counted before the image thread starts: the two never share the tokenizer.
        lengths = {i: self.adapter.prefix_tokens(image, prefix_texts[i]) for i, image in wanted.items()}
        with ImageInputs(self.processor, wanted, prefix_texts) as inputs:
            if None in lengths.values():  # this processor cannot count without processing
                lengths = {image: inputs.tokens(image) for image in wanted}
            max_rows = min(max_batch, len(rows))
            blocks = self._pool(lengths, rows, max_rows, cache_bytes)
            scheduler = Scheduler(rows, lengths, blocks, max_rows=max_rows,
                                  step_tokens=self.step_tokens, eos=self.adapter.eos_ids)
            static = self._static_step(scheduler, blocks, lengths, max_batch)
            runner = ModelRunner(self.adapter, self._cache, blocks, inputs,
                                 temperature=temperature, seed=seed, clock=clock, static=static)
            self.stats.attention = ("reference" if static is None else
                                    "kernels and CUDA graphs" if static.use_graphs else "kernels")
            captured = 0.0 if static is None else static.capture_seconds
            if self.plan_ahead and static is not None:
                self._steps_ahead(scheduler, runner, on_done)
            else:
                self._steps(scheduler, runner, on_done)
            self.stats.rows, self.stats.prefills = max_rows, len(lengths)
            self.stats.preemptions, self.stats.blocks = scheduler.preemptions, blocks.blocks
            if static is not None:
                self.stats.capture_seconds = static.capture_seconds - captured
        clock.host("images", inputs.waited)

    def _steps(self, scheduler: Scheduler, runner: ModelRunner, on_done) -> None:
        """Plan, run, take the tokens back: one step after the other."""
        while not scheduler.finished:
            plan = scheduler.schedule()
            tokens = runner.run(plan)
            self._count(plan, len(tokens), len(scheduler.running))
            self._report(scheduler.postprocess(plan, tokens), on_done)

    def _steps_ahead(self, scheduler: Scheduler, runner: ModelRunner, on_done) -> None:
        """Each step planned and queued before the last one's tokens are back: the host
        plans while the device runs. A row whose eos is not known yet runs one more token,
        which is dropped."""
        launched = None
        while True:
            upcoming = None
            if not scheduler.finished:
                plan = scheduler.schedule()
                upcoming = runner.launch(plan, previous=launched)
                scheduler.expect(plan)
                self._count(plan, len(plan.sampling), len(scheduler.running))
            if launched is not None:
                self._report(scheduler.resolve(launched.plan, launched.tokens()), on_done)
            if upcoming is None:
                return
            launched = upcoming

    @staticmethod
    def _report(ended, on_done) -> None:
        if on_done is not None:
            for row in ended:
                on_done(row.image, row.index, row.output)

    def _count(self, plan, sampled: int, running: int) -> None:
        stats = self.stats
        stats.steps += 1
        stats.peak_rows = max(stats.peak_rows, running)
        stats.live_row_steps += sampled
        stats.mixed_steps += bool(plan.prefill)
        stats.tokens["decode"] += len(plan.decode)
        for chunk in plan.prefill:
            stats.tokens["rows" if isinstance(chunk.sequence, Row) else "prefixes"] += chunk.count

    def _static_step(self, scheduler: Scheduler, blocks: BlockPool, lengths: dict[int, int],
                     max_batch: int) -> StaticStep | None:
        """The step buffers (and graphs) for this call, kept from the last call where they
        hold it: sized from the batch setting, not the call, so a run's calls share them."""
        adapter = self.adapter
        if not kernels_run(adapter):
            return None
        capacity = Capacity(
            tokens=max_batch + self.step_tokens, rows=max_batch,
            row_blocks=scheduler.longest_row, images=min(len(lengths), MAX_LOADED_IMAGES),
            prefix_blocks=max(blocks.blocks_for(length) for length in lengths.values()),
            group=adapter.heads // adapter.kv_heads).rounded()
        if self._static is None or not self._static.holds(self._cache, capacity):
            self._static = None  # its graphs' memory goes before the new ones are captured
            self._static = StaticStep(adapter, self._cache, capacity, graphs=self.graphs)
        return self._static

    def _pool(self, lengths: dict[int, int], rows: list[Row], max_rows: int,
              cache_bytes: int | None) -> BlockPool:
        """The call's blocks: as many as its prefixes and ``max_rows`` of its longest rows
        want, at most what the memory left after the weights holds; the storage is kept for
        later calls while it serves them."""
        adapter, size = self.adapter, self.block_size
        per_block = bytes_per_block(adapter.layers, adapter.kv_heads, adapter.head_dim,
                                    adapter.dtype, size)
        longest = max(-(-(len(row.suffix) + row.max_new_tokens) // size) for row in rows)
        wanted = sum(-(-length // size) for length in lengths.values()) + max_rows * longest
        if self._cache is not None and not self._cache.fits(wanted, size, adapter.dtype,
                                                            adapter.device):
            # It may need more than it holds: free it (and the graphs over it) before the
            # memory left is measured, or the pool would be sized without the old one's room.
            self._static = None
            self._cache = None
            if adapter.device.type == "cuda":
                torch.cuda.empty_cache()
        count = pool_blocks(wanted, per_block, adapter.device, cache_bytes)
        if count < 1:
            raise MemoryError(f"no room for the decoder's cache: {cache_bytes or 0} bytes are "
                              "left after the weights; raise EVALFLEET_MEMORY_BUDGET_GB")
        if self._cache is None or not self._cache.fits(count, size, adapter.dtype, adapter.device):
            self._static = None  # its graphs hold the old storage
            self._cache = None  # the old storage goes before the new one is allocated
            self._cache = KVCache(layers=adapter.layers, kv_heads=adapter.kv_heads,
                                  head_dim=adapter.head_dim, blocks=count, block_size=size,
                                  dtype=adapter.dtype, device=adapter.device)
        most_prefix = max(-(-length // size) for length in lengths.values())
        logger.info("paged cache: %d blocks of %d tokens (%.2f GiB); beside the largest prefix, "
                    "%d rows of the longest fit at once; up to %d rows run (EVALFLEET_MAX_BATCH "
                    "caps them)", count, size, count * per_block / 2**30,
                    max(0, count - most_prefix) // longest, max_rows)
        return BlockPool(count, size)
