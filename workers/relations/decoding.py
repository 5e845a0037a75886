"""What the relations decoders need besides their attention and layers.

The prompt split at the image, token budgets, eos and pad ids, picking the next token, a clock
for the phases of a call and whether the Triton kernels run: the paged engine
(``workers/relations/engine/``, the product's decoder) uses these. The benchmarks' baselines
(``bench/static_decoder.py``, ``bench/slot_decoder.py``) use them too, and the static-cache
pieces besides: cache lengths, the weights' addresses their CUDA graphs depend on, graph
capture and the KV storage.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time

import torch
from transformers import PreTrainedModel, ProcessorMixin

logger = logging.getLogger(__name__)

VISION_END = "<|vision_end|>"
# Cache lengths are rounded up to a multiple of this, so batches of nearby lengths share a graph.
LENGTH_STEP = 256


def split_after_image(text: str) -> tuple[str, str]:
    """(the text up to and including ``<|vision_end|>``, the rest)."""
    prefix, marker, suffix = text.partition(VISION_END)
    if not marker:
        raise ValueError(f"the prompt has no {VISION_END}: {text[:80]!r}")
    return prefix + marker, suffix


def prompt_budget(max_new_tokens: int | list[list[int]], image: int, index: int) -> int:
    """The token budget of prompt ``index`` of image ``image``: one budget for all, or one each."""
    budget = max_new_tokens if isinstance(max_new_tokens, int) else max_new_tokens[image][index]
    if budget < 1:
        raise ValueError("every prompt needs a token budget of at least 1")
    return budget


def length_bucket(tokens: int) -> int:
    """Columns of the static cache: ``tokens`` rounded up to a multiple of LENGTH_STEP."""
    return -(-tokens // LENGTH_STEP) * LENGTH_STEP


def weight_pointers(model: PreTrainedModel) -> tuple[int, ...]:
    """The addresses of a model's weights: captured graphs are valid only while these hold."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return tuple(tensor.data_ptr() for tensor in tensors)


def check_graph_rope(model: PreTrainedModel, use_cuda_graph: bool) -> None:
    """Refuse rotary types a CUDA graph cannot replay."""
    rope_type = model.model.language_model.rotary_emb.rope_type
    if use_cuda_graph and ("dynamic" in rope_type or rope_type == "longrope"):
        # These recompute frequencies from max(position) in Python: a host sync per step.
        raise ValueError(f"rope type {rope_type!r} cannot run in a CUDA graph")


def eos_token_ids(model: PreTrainedModel) -> list[int]:
    """The ids that end an answer, from the model's generation config."""
    eos = model.generation_config.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def pad_token_id(model: PreTrainedModel, processor: ProcessorMixin) -> int:
    """The id that fills a row after its eos: the model's, else the tokenizer's."""
    pad = model.generation_config.pad_token_id
    return pad if pad is not None else processor.tokenizer.pad_token_id


def capture_graph(device: torch.device, run, pool) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Record ``run()`` (a decode step reading and writing only static tensors) in a CUDA graph.

    The two warm-up runs, on a side stream as capture requires, are real steps on the current
    inputs: they write the same keys and values at the same columns as the replay that
    follows, so they change nothing.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = run()
    return graph, output


def kv_storage_fits(storage: torch.Tensor | None, model: PreTrainedModel, elements: int) -> bool:
    """Whether ``storage`` already holds ``elements`` per layer on the model's device and dtype."""
    return (storage is not None and storage.shape[1] >= elements
            and storage.device == model.device and storage.dtype == model.dtype)


def new_kv_storage(model: PreTrainedModel, elements: int) -> torch.Tensor:
    """Keys and values of every layer, ``elements`` each, as one (2 x layers, elements) tensor
    on the model's device.

    Zeros, not empty: masked slots are still multiplied by 0, and 0 * NaN garbage is NaN.
    """
    layers = model.config.text_config.num_hidden_layers
    return torch.zeros(2 * layers, elements, dtype=model.dtype, device=model.device)


def pick_tokens(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row of (rows, vocab) logits: argmax at temperature 0, else a seeded draw.

    Sampling applies temperature, then top-k, then top-p, in the order ``generate`` does.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k:
        kth_best = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth_best, float("-inf"))
    if top_p is not None and top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        # Keep a token while the better ones hold less than top_p; the best one always stays.
        mass_before = probs.cumsum(dim=-1) - probs
        ordered = ordered.masked_fill(mass_before > top_p, float("-inf"))
        scores = scores.scatter(-1, order, ordered)
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator).squeeze(1)


class PhaseClock:
    """Seconds spent in named phases of a generate call, for its log line.

    On CUDA a phase is timed by events on the stream (what the GPU saw between its start and
    end, idle gaps included), read once at the end: timing adds no host sync. On the CPU it is
    host time.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._host: dict[str, float] = {}
        self._events: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.cuda:
            started = time.perf_counter()
            yield
            self._host[name] = self._host.get(name, 0.0) + time.perf_counter() - started
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._events.append((name, start, end))

    def host(self, name: str, seconds: float) -> None:
        """Add host seconds (work the GPU does not see, such as the image processor)."""
        self._host[name] = self._host.get(name, 0.0) + seconds

    def seconds(self) -> dict[str, float]:
        totals = dict(self._host)
        if self._events:
            self._events[-1][2].synchronize()
        for name, start, end in self._events:
            totals[name] = totals.get(name, 0.0) + start.elapsed_time(end) / 1000
        return totals


def triton_attention_runs(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the decoders' Triton attention kernels run here: CUDA, bf16/fp16, a head size
    that is a power of two, and Triton installed (else attention runs as plain products)."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return False
    if head_dim < 16 or head_dim & (head_dim - 1):
        logger.warning(
            "head_dim %d is not a power of two; attention runs as plain products", head_dim)
        return False
    try:
        import triton  # noqa: F401  (whether it imports)
    except ImportError as exc:
        logger.warning(
            "Triton unavailable (%s); attention runs as plain products", exc)
        return False
    return True
