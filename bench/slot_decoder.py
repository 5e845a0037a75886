"""Many prompts about several images with a Qwen3-VL: one prefix copy per image, continuous slots.

Every prompt renders as::

    <|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>{prompt}<|im_end|>\\n<|im_start|>assistant\\n

Everything up to ``<|vision_end|>`` (the *prefix*, ~1200 tokens for the 8B at real image sizes)
is the same for all prompts of an image. It runs through the model once, with the image, and its
keys/values are stored once, in an *image slot*. A prompt's own tokens (its suffix, then what it
generates) go to a *row*: a private cache of its own. Attention at each step is the exact
softmax over [its image's prefix | its row], computed in two parts that share one maximum and
one denominator ("cascade" attention), so a batch of 256 rows reads each image's prefix once,
not 256 times.

Layout of one decode step (static shapes, so a CUDA graph can replay it)::

    image slots  (I, P, kv_heads, head_dim) per layer
    rows         (B, S, kv_heads, head_dim) per layer; a step reads the first W columns of
                 each row (flash: only the columns the row has used)

Rows are a pool, *continuous*: when rows end (eos or their token budget), the next waiting
prompts take them at a check (every CHECK_EVERY steps), whatever their image, once enough rows
are free to be worth a refill prefill (REFILL_SHARE); an image enters a free image slot when the
prompts already loaded would leave rows idle, and leaves it when its last prompt has ended.
Rows that end wait for a few more to end, not for the batch.

Positions follow Qwen3-VL's 3D mrope: the prefix gets the model's ``get_rope_index``; text after
the image has the same value on all three axes, counting on from the prefix's largest + 1.

The benchmarks' baseline: it was the product's decoder until the paged engine
(workers/relations/engine/) beat it on every benchmark (bench/RESULTS.md); bench/slot_worker.py
runs it in a fleet's worker.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedModel, ProcessorMixin

from bench.cascade_attention import (
    CascadeCaches,
    FlashDecode,
    FlashPrefill,
    MatmulDecode,
    MatmulPrefill,
    flash_available,
    power_of_two,
    prefix_splits,
)
from workers.relations.decoding import (
    PhaseClock,
    capture_graph,
    check_graph_rope,
    eos_token_ids,
    kv_storage_fits,
    length_bucket,
    new_kv_storage,
    pad_token_id,
    pick_tokens,
    prompt_budget,
    split_after_image,
    weight_pointers,
)
from workers.relations.image_inputs import ImageInputs, prefix_tokens
from workers.relations.layers import Attention, run_text_layers

logger = logging.getLogger(__name__)

# Finished rows are noticed (a host sync) once every this many steps; a row that ends waits for
# the next check before its slot takes another prompt.
CHECK_EVERY = 8
# The row columns read by a step are rounded up to a multiple of this: one graph per window.
WINDOW_STEP = 128
# Batch rows come in multiples of this (one graph per layout), fewer for small calls.
ROW_MULTIPLE = 64
# Rows that end are refilled together, once at least 1/REFILL_SHARE of the batch is free (or
# every prompt left fits the free rows): a refill prefill of a few rows is bound by launching
# its ~40 kernels a layer, so 32 rows cost little more than 4 (a 15-row refill took ~115 ms on
# an H200 for ~30 ms of arithmetic: bench/RESULTS.md, "Latest (third session of 2026-12-01)"),
# while a row that ends idles only a few more steps.
REFILL_SHARE = 8
# Images whose prefixes run through the model in one pass.
PREFIX_BATCH = 8
# Suffix tokens prefilled in one pass when rows start (bounds the pass's attention scores).
PREFILL_TOKENS = 4096


def kv_bytes_per_token(model: PreTrainedModel) -> int:
    """Bytes of keys and values one token holds across all layers."""
    config = model.config.text_config
    element = torch.finfo(model.dtype).bits // 8
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * element


def slot_shape(prompt_counts: list[int], max_batch: int, *, bytes_per_image: int = 0,
               bytes_per_row: int = 0, cache_bytes: int | None = None) -> tuple[int, int]:
    """(image slots I, rows B) for images with these prompt counts.

    Rows: enough for every prompt at once, up to ``max_batch`` (in multiples of ROW_MULTIPLE,
    a power of two below it). Image slots: one per image, up to one per row (an image holds its
    slot until its last prompt ends, so extra slots let the next images start meanwhile),
    a power of two. With ``cache_bytes``, rows are halved (and image slots with them) until
    the cache fits.
    """
    total = sum(prompt_counts)
    step = min(ROW_MULTIPLE, power_of_two(total))
    rows = max(1, min(max_batch, -(-total // step) * step))
    images = min(power_of_two(len(prompt_counts)), power_of_two(rows))
    while cache_bytes is not None and images * bytes_per_image + rows * bytes_per_row > cache_bytes:
        if rows == 1:
            raise MemoryError(
                f"the decoder cache for one prompt needs {(bytes_per_image + bytes_per_row) / 2**30:.2f}"
                f" GiB but {cache_bytes / 2**30:.2f} GiB are left after the weights; lower "
                "EVALFLEET_MAX_NEW_TOKENS or raise EVALFLEET_MEMORY_BUDGET_GB")
        rows = -(-rows // 2)
        images = min(images, power_of_two(rows))
    return images, rows


@dataclass
class Request:
    """One prompt: which image, its suffix token ids and its token budget; ``index`` is its
    place among the image's prompts."""

    image: int
    suffix: list[int]
    max_new_tokens: int
    index: int = 0
    tokens: list[int] = field(default_factory=list)


@dataclass
class DecodeStats:
    """What the last ``generate`` did, for logs and benchmarks."""

    steps: int = 0
    rows: int = 0  # batch rows (B)
    live_row_steps: int = 0  # steps that produced a kept token
    prefills: int = 0
    seconds: float = 0.0
    # Seconds per phase: images (the processor, on the host), prefixes, rows (suffix
    # prefills), decode (steps and picks); the rest of ``seconds`` is host bookkeeping.
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def occupancy(self) -> float:
        """Share of row-steps spent on a prompt that still needed its token."""
        return self.live_row_steps / max(1, self.steps * self.rows)


@dataclass
class _Shape:
    """Static state of one (I, B, P, S) layout; graphs are keyed on its window and most rows
    per image slot too."""

    caches: CascadeCaches
    input_ids: torch.Tensor  # (B, 1): the token fed at this step
    positions: torch.Tensor  # (B,): its text position (all three mrope axes)
    graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = field(
        default_factory=dict)

    @property
    def batch(self) -> int:
        return self.caches.batch


class SlotDecoder:
    """Generates answers to rendered Qwen3-VL prompts over several images (the paged engine's
    interface: ``generate``, ``stats``, ``release``, ``cache_bytes``, ``name``).

    The caches live in one storage that grows to the largest layout asked for; every layout is
    a view of its start. With ``use_cuda_graph`` and a CUDA model each (layout, window) decode
    step is captured once and replayed; otherwise, and always on the CPU, it runs eagerly.
    """

    name = "slot"  # in the workers' log, as the paged engine's name is

    def __init__(self, processor: ProcessorMixin, model: PreTrainedModel, *,
                 use_cuda_graph: bool = True, compile_layers: bool | None = None) -> None:
        check_graph_rope(model, use_cuda_graph)
        self.processor = processor
        self.model = model
        self.use_cuda_graph = use_cuda_graph
        self.stats = DecodeStats()
        self.clock = PhaseClock(model.device)
        self._storage: torch.Tensor | None = None
        self._shapes: dict[tuple[int, int, int, int], _Shape] = {}
        self._weights: tuple[int, ...] = ()
        self._graph_pool = None
        # Flash attention where it runs (CUDA, bf16/fp16); plain products elsewhere.
        self.flash = flash_available(model.device, model.dtype, model.config.text_config.head_dim)
        # The layers' elementwise work fused by torch.compile: on CUDA unless told otherwise.
        self.compile_layers = (model.device.type == "cuda" if compile_layers is None
                               else compile_layers)

    @property
    def cache_bytes(self) -> int:
        """Device bytes the caches hold now (0 after ``release``)."""
        storage = self._storage
        return 0 if storage is None else storage.numel() * storage.element_size()

    def generate(
        self,
        images: list[Image.Image],
        texts: list[list[str]],
        *,
        max_batch: int,
        cache_bytes: int | None = None,
        max_new_tokens: int | list[list[int]],
        temperature: float,
        seed: int,
        on_done: Callable[[int, int, list[int]], None] | None = None,
    ) -> list[list[list[int]]]:
        """New token ids for every text of every image, each up to and including its first eos.

        ``texts[i]`` are rendered prompts about ``images[i]``. ``max_new_tokens`` is one budget
        for all, or one per text. At most ``max_batch`` rows decode at once, fewer if their
        cache would not fit ``cache_bytes``. Greedy at temperature 0; otherwise sampling (with the
        model's generation_config top-k/top-p) from a generator seeded with ``seed``.
        ``on_done(image, index, tokens)`` is called for each text as soon as its answer ends.
        """
        started = time.perf_counter()
        requests, prefixes = self._requests(texts, max_new_tokens)
        self.stats = DecodeStats()
        self.clock = PhaseClock(self.model.device)
        if requests:
            with torch.inference_mode():
                self._run(images, prefixes, requests, max_batch, cache_bytes, temperature, seed,
                          on_done)
        self.stats.phases = self.clock.seconds()
        self.stats.seconds = time.perf_counter() - started
        result: list[list[list[int]]] = [[] for _ in texts]
        for request in requests:
            result[request.image].append(request.tokens)
        return result

    def release(self) -> None:
        """Free the caches and the CUDA graphs (the next generate allocates them again)."""
        self._shapes.clear()
        self._storage = None
        self._graph_pool = None

    # --- requests ------------------------------------------------------------------------

    def _requests(self, texts: list[list[str]], max_new_tokens) -> tuple[list[Request], list[str]]:
        prefixes, requests = [], []
        for image, image_texts in enumerate(texts):
            parts = [split_after_image(text) for text in image_texts]
            if any(prefix != parts[0][0] for prefix, _ in parts):
                raise ValueError(f"the prompts of image {image} do not share one image prefix")
            prefixes.append(parts[0][0] if parts else "")
            if not parts:
                continue
            suffixes = self.processor.tokenizer([s for _, s in parts], add_special_tokens=False)
            for index, ids in enumerate(suffixes["input_ids"]):
                requests.append(Request(image=image, suffix=ids, index=index,
                                        max_new_tokens=prompt_budget(max_new_tokens, image, index)))
        return requests, prefixes

    # --- the loop ------------------------------------------------------------------------

    def _run(self, images, prefixes, requests, max_batch, cache_bytes, temperature, seed,
             on_done) -> None:
        counts = [sum(r.image == i for r in requests) for i in range(len(images))]
        wanted = [i for i, count in enumerate(counts) if count]
        # Counted here before the image thread starts: the two never share the tokenizer.
        lengths = [prefix_tokens(self.processor, images[i], prefixes[i]) for i in wanted]
        with ImageInputs(self.processor, {i: images[i] for i in wanted},
                         {i: prefixes[i] for i in wanted}) as inputs:
            if None in lengths:  # this processor cannot count without processing: wait for all
                lengths = [inputs.tokens(i) for i in wanted]
            prefix_length = length_bucket(max(lengths))
            row_length = length_bucket(max(len(r.suffix) + r.max_new_tokens for r in requests)
                                       + CHECK_EVERY)
            per_token = kv_bytes_per_token(self.model)
            image_slots, rows = slot_shape(
                [counts[i] for i in wanted], max_batch, bytes_per_image=prefix_length * per_token,
                bytes_per_row=row_length * per_token, cache_bytes=cache_bytes)
            self._drop_graphs_if_weights_moved()
            shape = self._shape(image_slots, rows, prefix_length, row_length)
            _Scheduler(self, shape, inputs, requests, temperature, seed, on_done).run()
        self.clock.host("images", inputs.waited)

    # --- prefill -------------------------------------------------------------------------

    def prefill_prefixes(self, shape: _Shape, slots: list[int], inputs: list[dict]) -> list[int]:
        """Up to PREFIX_BATCH images and the text before them into image slots, in one pass;
        returns each one's next text position.

        One pass per several images: at batch 1 a prefix pass (~1200 tokens, 64 layers of the
        vision tower and the language model) is bound by launching its kernels, not by the
        GPU. Deepstack features are added to the visual positions in the first layers here,
        so they are in the prefix keys/values; later passes are text only.
        """
        with self.clock.phase("prefixes"):
            return self._prefill_prefix_pass(shape, slots, inputs)

    def _prefill_prefix_pass(self, shape: _Shape, slots: list[int], inputs: list[dict]) -> list[int]:
        batch = _left_padded(inputs, self._pad_id()).to(self.model.device)
        positions, _ = self.model.model.get_rope_index(
            batch["input_ids"], batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"])
        output = self.model(**batch, position_ids=positions, use_cache=True, logits_to_keep=1)
        caches = shape.caches
        for row, (slot, one) in enumerate(zip(slots, inputs)):
            length = one["input_ids"].shape[1]  # left padding: a prefix is its row's last columns
            if length > caches.prefix_length:
                raise RuntimeError(f"an image's prefix has {length} tokens, more than the "
                                   f"{caches.prefix_length} counted from its size")
            for layer, cached in enumerate(output.cache.layers):
                caches.prefix_keys[layer][slot, :length] = cached.keys[row, :, -length:].transpose(0, 1)
                caches.prefix_values[layer][slot, :length] = cached.values[row, :, -length:].transpose(0, 1)
            caches.prefix_filled[slot] = length
        self.stats.prefills += len(slots)
        return [int(positions[:, row].max()) + 1 for row in range(len(slots))]

    def prefill_rows(self, shape: _Shape, rows: list[int], slots: list[int],
                     suffixes: list[list[int]], starts: list[int]) -> torch.Tensor:
        """Run the suffixes of prompts that take ``rows``; their first logits (n, vocab).

        Suffixes are right-padded: a pad's keys land after the row's last token, where the
        first generated token overwrites them, and nothing reads a column beyond its own.
        """
        device = self.model.device
        width = max(len(ids) for ids in suffixes)
        ids = torch.full((len(rows), width), self._pad_id(), dtype=torch.long)
        for n, suffix in enumerate(suffixes):
            ids[n, : len(suffix)] = torch.tensor(suffix)
        lengths = torch.tensor([len(s) for s in suffixes], device=device)
        row_index = torch.tensor(rows, device=device)
        positions = (torch.tensor(starts, device=device)[:, None]
                     + torch.arange(width, device=device)[None, :])
        if slots != sorted(slots):  # checked here, on the host: on the device it would sync
            raise ValueError("the rows of a prefill must come sorted by image slot")
        groups = {slot: torch.tensor([n for n, s in enumerate(slots) if s == slot], device=device)
                  for slot in sorted(set(slots))}
        prefill = FlashPrefill if self.flash else MatmulPrefill
        attention = prefill(shape.caches, row_index, groups, width)
        hidden = self._layers(ids.to(device), positions, attention)
        last = hidden[torch.arange(len(rows), device=device), lengths - 1]
        logits = self._logits(last)
        shape.caches.columns[row_index] = lengths
        shape.positions[row_index] = positions[:, 0] + lengths
        return logits

    # --- decode --------------------------------------------------------------------------

    def step(self, shape: _Shape, window: int) -> torch.Tensor:
        """Feed ``shape.input_ids`` at each row's column; logits (B, vocab) for the next token."""
        if self.model.device.type == "cuda" and self.use_cuda_graph:
            key = (window, shape.caches.most_rows)
            graph = shape.graphs.get(key)
            if graph is None:
                graph = shape.graphs[key] = self._capture(shape, window)
            graph[0].replay()
            logits = graph[1]
        else:
            logits = self._decode_forward(shape, window)
        shape.caches.columns.add_(1)
        shape.positions.add_(1)
        return logits

    def _decode_forward(self, shape: _Shape, window: int) -> torch.Tensor:
        if self.flash:
            heads = self.model.config.text_config.num_attention_heads
            processors = torch.cuda.get_device_properties(self.model.device).multi_processor_count
            attention = FlashDecode(shape.caches, prefix_splits(shape.caches, heads, processors))
        else:
            attention = MatmulDecode(shape.caches, window)
        hidden = self._layers(shape.input_ids, shape.positions[:, None], attention)
        return self._logits(hidden[:, -1])

    def _capture(self, shape: _Shape, window: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Record one decode step of this layout and window (all graphs share one pool)."""
        started = time.perf_counter()
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        graph = capture_graph(self.model.device, lambda: self._decode_forward(shape, window),
                              self._graph_pool)
        caches = shape.caches
        logger.info("captured the decode step for %d image slots, %d rows, prefix %d, window %d "
                    "in %.2fs", caches.images, caches.batch, caches.prefix_length, window,
                    time.perf_counter() - started)
        return graph

    # --- the layers ----------------------------------------------------------------------

    def _layers(self, input_ids: torch.Tensor, positions: torch.Tensor, attention) -> torch.Tensor:
        return run_layers(self.model, input_ids, positions, attention, compiled=self.compile_layers)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)

    # --- static memory -------------------------------------------------------------------

    def _shape(self, images: int, batch: int, prefix_length: int, row_length: int) -> _Shape:
        key = (images, batch, prefix_length, row_length)
        if key not in self._shapes:
            config = self.model.config.text_config
            per_token = config.num_key_value_heads * config.head_dim
            self._reserve((images * prefix_length + batch * row_length) * per_token)
            self._shapes[key] = self._new_shape(*key)
        return self._shapes[key]

    def _reserve(self, elements: int) -> None:
        """Grow the storage to ``elements`` per layer for keys and values; growing drops graphs."""
        if kv_storage_fits(self._storage, self.model, elements):
            return
        self.release()  # free the old storage before the new one takes its place
        self._storage = new_kv_storage(self.model, elements)
        logger.info("slot decoder cache: %.2f GiB", self.cache_bytes / 2**30)

    def _new_shape(self, images: int, batch: int, prefix_length: int, row_length: int) -> _Shape:
        config = self.model.config.text_config
        heads, dim = config.num_key_value_heads, config.head_dim
        prefix = (images, prefix_length, heads, dim)
        private = (batch, row_length, heads, dim)
        split = images * prefix_length * heads * dim
        end = split + batch * row_length * heads * dim
        layers = self._storage.shape[0]
        prefix_views = [self._storage[i, :split].view(prefix) for i in range(layers)]
        row_views = [self._storage[i, split:end].view(private) for i in range(layers)]
        device = self.model.device
        caches = CascadeCaches(
            images=images, batch=batch, prefix_length=prefix_length, row_length=row_length,
            prefix_keys=prefix_views[0::2], prefix_values=prefix_views[1::2],
            row_keys=row_views[0::2], row_values=row_views[1::2],
            prefix_filled=torch.ones(images, dtype=torch.long, device=device),
            columns=torch.zeros(batch, dtype=torch.long, device=device),
            row_slot=torch.zeros(batch, dtype=torch.long, device=device),
            by_slot=torch.arange(batch, device=device),
            slot_starts=torch.tensor([0] + [batch] * images, dtype=torch.int32, device=device))
        return _Shape(caches=caches,
                      input_ids=torch.zeros(batch, 1, dtype=torch.long, device=device),
                      positions=torch.zeros(batch, dtype=torch.long, device=device))

    def _drop_graphs_if_weights_moved(self) -> None:
        """Graphs hold the weights' addresses; a residency swap-in gives the weights new memory."""
        pointers = weight_pointers(self.model)
        if pointers != self._weights:
            for shape in self._shapes.values():
                shape.graphs.clear()
            self._weights = pointers

    # --- helpers -------------------------------------------------------------------------

    def eos_ids(self) -> list[int]:
        return eos_token_ids(self.model)

    def _pad_id(self) -> int:
        return pad_token_id(self.model, self.processor)


def run_layers(model: PreTrainedModel, input_ids: torch.Tensor, positions: torch.Tensor,
               attention: Attention, *, compiled: bool) -> torch.Tensor:
    """The text model on (n, L) tokens at text positions (n, L) (the same on all three mrope
    axes); the final-normed hidden states (n, L, hidden) out.

    ``attention(layer, query, key, value)`` gets the pre-scaled query (n, heads, L, dim) and
    key/value (n, kv_heads, L, dim), and returns (n, L, heads, dim).
    """
    hidden = model.model.language_model.embed_tokens(input_ids)
    return run_text_layers(model, hidden, positions[None].expand(3, -1, -1), attention,
                           compiled=compiled)


class _Scheduler:
    """Host side of one generate call: which prompt holds which row, and when rows change."""

    def __init__(self, decoder: SlotDecoder, shape: _Shape, inputs: ImageInputs,
                 requests: list[Request], temperature: float, seed: int,
                 on_done: Callable[[int, int, list[int]], None] | None = None):
        self.decoder, self.shape = decoder, shape
        self.on_done = on_done
        self.inputs = inputs
        self.waiting: dict[int, list[Request]] = {}
        for request in requests:
            self.waiting.setdefault(request.image, []).append(request)
        self.images_left = list(self.waiting)  # images not yet in a slot, in order
        self.slot_image: list[int | None] = [None] * shape.caches.images
        self.next_position: dict[int, int] = {}
        self.row_request: list[Request | None] = [None] * shape.batch
        self.row_slot: list[int] = [0] * shape.batch  # a free row keeps its last slot
        self.eos = set(decoder.eos_ids())
        config = decoder.model.generation_config
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=decoder.model.device).manual_seed(seed)
        self.pick = lambda logits: pick_tokens(logits, temperature=temperature, top_k=config.top_k,
                                               top_p=config.top_p, generator=generator)
        stats = decoder.stats
        stats.rows = shape.batch

    def run(self) -> None:
        logits = torch.zeros(self.shape.batch, self.decoder.model.lm_head.out_features,
                             dtype=self.decoder.model.dtype, device=self.decoder.model.device)
        while True:
            self._fill(logits)
            live = [r for r, request in enumerate(self.row_request) if request is not None]
            if not live:
                return
            with self.decoder.clock.phase("decode"):
                tokens = self._window(logits, live)
            self._collect(tokens)

    def _window(self, logits: torch.Tensor, live: list[int]) -> torch.Tensor:
        """Up to CHECK_EVERY tokens per row without a host sync; (tokens, B) picked.

        No step is run for tokens no live row needs: after the last pick, a step runs only if
        some row will still want a token after this window.
        """
        requests = [self.row_request[r] for r in live]
        most_left = max(r.max_new_tokens - len(r.tokens) for r in requests)
        picks = min(CHECK_EVERY, most_left)
        columns = max(len(r.suffix) + len(r.tokens) for r in requests)
        window = min(self.shape.caches.row_length, -(-(columns + picks) // WINDOW_STEP) * WINDOW_STEP)
        if self.decoder.flash:  # flash reads each row's used columns only: one graph will do
            window = self.shape.caches.row_length
        picked = []
        for pick in range(picks):
            token = self.pick(logits)
            picked.append(token)
            self.decoder.stats.steps += 1
            if pick < picks - 1 or most_left > picks:
                self.shape.input_ids.copy_(token[:, None])
                logits.copy_(self.decoder.step(self.shape, window))
        return torch.stack(picked).cpu()

    def _collect(self, tokens: torch.Tensor) -> None:
        """Keep each live row's tokens up to its eos or budget; free the rows that ended."""
        by_row = tokens.t().tolist()  # one host list: slicing the tensor per row is slow
        for row, request in enumerate(self.row_request):
            if request is None:
                continue
            for token in by_row[row]:
                request.tokens.append(token)
                self.decoder.stats.live_row_steps += 1
                if token in self.eos or len(request.tokens) >= request.max_new_tokens:
                    self.row_request[row] = None
                    if self.on_done is not None:
                        self.on_done(request.image, request.index, request.tokens)
                    break
        free = [r for r, request in enumerate(self.row_request) if request is None]
        if free:  # parked rows write to column 0 and read only it: no growth, no NaN
            index = torch.tensor(free, device=self.shape.caches.columns.device)
            self.shape.caches.columns[index] = 0

    def _fill(self, logits: torch.Tensor) -> None:
        """Free the image slots whose image is done, load the next images while rows would
        otherwise idle, and give free rows the waiting prompts, images in order."""
        self._free_finished_slots()
        free_rows = [r for r, request in enumerate(self.row_request) if request is None]
        waiting = sum(len(queue) for queue in self.waiting.values())
        if len(free_rows) < min(max(1, self.shape.batch // REFILL_SHARE), waiting):
            return  # wait until more rows are free, or all the prompts left fit
        new_slots = self._load_images(len(free_rows))
        joining: list[tuple[int, int, Request]] = []
        for slot, image in enumerate(self.slot_image):
            queue = self.waiting.get(image, []) if image is not None else []
            while queue and free_rows:
                row = free_rows.pop(0)
                self.row_request[row], self.row_slot[row] = queue.pop(0), slot
                joining.append((row, slot, self.row_request[row]))
        if joining or new_slots:
            self.shape.caches.assign(self.row_slot)
        with self.decoder.clock.phase("rows"):
            for chunk in _prefill_chunks(joining):  # sorted by image slot, as the prefill needs
                rows, slots, requests = zip(*chunk)
                new_logits = self.decoder.prefill_rows(
                    self.shape, list(rows), list(slots), [r.suffix for r in requests],
                    [self.next_position[r.image] for r in requests])
                logits[torch.tensor(rows, device=logits.device)] = new_logits.to(logits.dtype)

    def _free_finished_slots(self) -> None:
        live_slots = {self.row_slot[r] for r, request in enumerate(self.row_request) if request}
        for slot, image in enumerate(self.slot_image):
            if image is not None and not self.waiting.get(image) and slot not in live_slots:
                self.slot_image[slot] = None

    def _load_images(self, free_rows: int) -> list[int]:
        """Prefill the next images into free slots while fewer prompts wait than rows are free."""
        waiting = sum(len(self.waiting.get(image, [])) for image in self.slot_image
                      if image is not None)
        new_slots = []
        for slot, image in enumerate(self.slot_image):
            if not self.images_left or waiting >= free_rows:
                break
            if image is None:
                self.slot_image[slot] = self.images_left.pop(0)
                waiting += len(self.waiting[self.slot_image[slot]])
                new_slots.append(slot)
        for start in range(0, len(new_slots), PREFIX_BATCH):
            # A pass's images are taken just before it: the image thread processes the next
            # ones while the GPU runs it.
            slots = new_slots[start:start + PREFIX_BATCH]
            images = [self.slot_image[slot] for slot in slots]
            positions = self.decoder.prefill_prefixes(
                self.shape, slots, [self.inputs.take(image) for image in images])
            self.next_position.update(zip(images, positions))
        return new_slots


def _left_padded(inputs: list[dict], pad_id: int) -> dict:
    """Processor outputs of single prompts as one left-padded batch (the processor's own
    padding side for generation)."""
    width = max(one["input_ids"].shape[1] for one in inputs)

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.cat([torch.cat([torch.full((1, width - one[key].shape[1]), value,
                                                dtype=one[key].dtype), one[key]], dim=1)
                          for one in inputs])

    batch = {"input_ids": padded("input_ids", pad_id), "attention_mask": padded("attention_mask", 0),
             "mm_token_type_ids": padded("mm_token_type_ids", 0)}
    batch["pixel_values"] = torch.cat([one["pixel_values"] for one in inputs])
    batch["image_grid_thw"] = torch.cat([one["image_grid_thw"] for one in inputs])
    return BatchFeature(batch)


def _prefill_chunks(joining: list[tuple[int, int, Request]]) -> list[list[tuple[int, int, Request]]]:
    """The rows to prefill, in runs of at most PREFILL_TOKENS (padded) suffix tokens: their
    attention scores over the prefix grow with rows x suffix length, and 1024 rows at once
    would need tens of GB."""
    chunks: list[list[tuple[int, int, Request]]] = []
    widest = 0
    for entry in joining:
        width = len(entry[2].suffix)
        if chunks and (len(chunks[-1]) + 1) * max(widest, width) <= PREFILL_TOKENS:
            chunks[-1].append(entry)
            widest = max(widest, width)
        else:
            chunks.append([entry])
            widest = width
    return chunks

