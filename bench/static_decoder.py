"""The earlier relations decoder, kept only as the benchmarks' side-by-side baseline.

This one (one image at a time, every batch row with its own copy of the image prefix) was
removed from the product once the slot decoder (``bench/slot_decoder.py``, itself retired since
for the paged engine, ``workers/relations/engine/``) won every benchmark (bench/RESULTS.md).
``bench/bench_decoder.py`` times the two side by side.

How it decodes: many prompts about one image, the image prefilled once, decoding static.

Every prompt renders as::

    <|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>{prompt}<|im_end|>\\n<|im_start|>assistant\\n

Everything up to ``<|vision_end|>`` (about 1200 tokens for the 8B at real image sizes) is the same
for all prompts of an image, so it runs through the model once, at batch 1, with the image. Each
batch copies those keys and values into a static cache, prefills only the prompt suffixes, then
decodes one token per step against that cache. At batch 64 the 8B's eager decode step is dominated
by kernel launches (140 ms on an H100, against 6 ms of weight reads), so on CUDA the step is
captured once per shape in a CUDA graph and replayed.

One batch row in the cache; all rows share the columns, so one write column serves the batch::

    [ prefix (P) | left pads | suffix | generated ... | unused up to the length bucket ]

Positions: Qwen3-VL's 3D mrope. The prefix gets the model's own ``get_rope_index`` (the image
tokens' t/h/w grid). Text after the image has the same value on all three axes, counting on from
the prefix's largest position + 1; pads take no position, as in ``generate`` with left padding.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from workers.relations.engine.attention import additive
from workers.relations.decoding import (
    capture_graph,
    check_graph_rope,
    eos_token_ids,
    kv_storage_fits,
    length_bucket,
    new_kv_storage,
    pad_token_id,
    pick_tokens,
    split_after_image,
    weight_pointers,
)

logger = logging.getLogger(__name__)


def cut_after_eos(tokens: torch.Tensor, eos_ids: list[int]) -> list[list[int]]:
    """Each row of (rows, steps) up to and including its first eos; what follows is padding."""
    rows = []
    for row in tokens.tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in eos_ids), len(row))
        rows.append(row[:end])
    return rows


# "Has every row produced an eos?" costs a host sync, so it is asked once every this many steps.
EOS_CHECK_EVERY = 8
# Attention implementations that apply a 4D additive mask as given (flash attention ignores it).
_MASK_ATTENTION = ("sdpa", "eager")


def batch_bucket(rows: int, batch_size: int) -> int:
    """Rows of the static batch: a power of two, at most ``batch_size``."""
    return min(1 << (rows - 1).bit_length(), batch_size)



@dataclass
class _Prefix:
    """The image prefix, run once: keys/values per layer, (1, kv_heads, P, head_dim) each."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    # The mrope position of the first text token after the prefix, on all three axes.
    next_position: int

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]


class _CacheWriter:
    """The cache the attention layers see: new keys/values go to ``columns`` of static tensors.

    Qwen3-VL's attention calls only ``cache.update(k, v, layer_idx, kwargs=...)`` and attends over
    what it returns, so this stands in for transformers' Cache with no hidden length bookkeeping.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], columns: torch.Tensor):
        self.keys, self.values, self.columns = keys, values, columns

    def update(self, key_states, value_states, layer_idx, kwargs=None):
        self.keys[layer_idx].index_copy_(2, self.columns, key_states)
        self.values[layer_idx].index_copy_(2, self.columns, value_states)
        return self.keys[layer_idx], self.values[layer_idx]


@dataclass
class _Bucket:
    """Static decode state of one (batch, cache length) shape; a CUDA graph replays on its addresses."""

    keys: list[torch.Tensor]  # per layer (B, kv_heads, L, head_dim), views of the shared storage
    values: list[torch.Tensor]
    input_ids: torch.Tensor  # (B, 1): the token fed at this step
    position_ids: torch.Tensor  # (3, B, 1): its t/h/w mrope positions (equal for text)
    column: torch.Tensor  # (1,): the cache column this step writes
    mask: torch.Tensor  # (B, 1, 1, L) additive: 0 where a key is visible, dtype min elsewhere
    graph: torch.cuda.CUDAGraph | None = None
    logits: torch.Tensor | None = None  # the graph's output, overwritten by each replay


class ImagePromptDecoder:
    """Generates answers to many rendered Qwen3-VL prompts over one image.

    The static cache lives in one storage that grows to the largest (batch x length) asked for;
    every bucket is a view of its start, so buckets never add cache memory. With
    ``use_cuda_graph`` and a CUDA model, each bucket's decode step is captured once (all graphs
    share one memory pool) and replayed; otherwise, and always on the CPU, it runs eagerly.
    """

    def __init__(
        self, processor: ProcessorMixin, model: PreTrainedModel, *, use_cuda_graph: bool = True
    ) -> None:
        attention = model.model.language_model.config._attn_implementation
        if attention not in _MASK_ATTENTION:
            raise ValueError(f"attention {attention!r} ignores 4D masks; load the model with sdpa")
        check_graph_rope(model, use_cuda_graph)
        self.processor = processor
        self.model = model
        self.use_cuda_graph = use_cuda_graph
        self._storage: torch.Tensor | None = None  # (2 * layers, elements): keys, values per layer
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._weight_pointers: tuple[int, ...] = ()
        self._graph_pool = None

    def generate(
        self,
        image: Image.Image,
        texts: list[str],
        *,
        batch_size: int,
        max_new_tokens: int,
        temperature: float,
        seed: int,
    ) -> list[list[int]]:
        """New token ids per text, in order, each up to and including its first eos.

        ``texts`` are rendered prompts that share everything up to ``<|vision_end|>``. Greedy at
        temperature 0; otherwise sampling (with the model's generation_config top-k/top-p) from
        a generator on the model's device seeded with ``seed``.
        """
        if not texts:
            return []
        prefix_text, suffixes = self._split(texts)
        config = self.model.generation_config
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=self.model.device).manual_seed(seed)

        def pick(logits: torch.Tensor) -> torch.Tensor:
            return pick_tokens(logits, temperature=temperature, top_k=config.top_k,
                               top_p=config.top_p, generator=generator)

        with torch.inference_mode():
            self._drop_graphs_if_weights_moved()
            prefix = self._prefill_prefix(image, prefix_text)
            suffix_ids = self.processor.tokenizer(suffixes, add_special_tokens=False)["input_ids"]
            rows: list[list[int]] = []
            for start in range(0, len(suffix_ids), batch_size):
                batch = suffix_ids[start : start + batch_size]
                rows.extend(self._generate_batch(prefix, batch, batch_size, max_new_tokens, pick))
        return rows

    def release(self) -> None:
        """Free the static cache and the CUDA graphs (the next generate allocates them again)."""
        self._buckets.clear()
        self._storage = None
        self._graph_pool = None

    # --- prefill -------------------------------------------------------------------------

    @staticmethod
    def _split(texts: list[str]) -> tuple[str, list[str]]:
        parts = [split_after_image(text) for text in texts]
        prefix = parts[0][0]
        if any(other != prefix for other, _ in parts):
            raise ValueError("the prompts do not share one image prefix")
        return prefix, [suffix for _, suffix in parts]

    def _prefill_prefix(self, image: Image.Image, prefix_text: str) -> _Prefix:
        """The image and the text before it, once, at batch 1: the only pass that sees pixels.

        Deepstack features are added to the visual positions in the first layers here, so they
        are in the prefix keys/values; later passes are text only.
        """
        inputs = self.processor(text=[prefix_text], images=[image], return_tensors="pt")
        inputs = inputs.to(self.model.device)
        positions, _ = self.model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"]
        )
        output = self.model(**inputs, position_ids=positions, use_cache=True, logits_to_keep=1)
        layers = output.cache.layers
        return _Prefix(keys=[layer.keys for layer in layers], values=[layer.values for layer in layers],
                       next_position=int(positions.max()) + 1)

    def _generate_batch(self, prefix: _Prefix, suffixes: list[list[int]], batch_size: int,
                        max_new_tokens: int, pick) -> list[list[int]]:
        width = max(len(ids) for ids in suffixes)
        # The last generated token is never fed back, hence the - 1.
        bucket = self._bucket(batch_bucket(len(suffixes), batch_size),
                              length_bucket(prefix.length + width + max_new_tokens - 1))
        logits = self._prefill_suffixes(bucket, prefix, suffixes, width)
        tokens = self._decode(bucket, logits, len(suffixes), max_new_tokens, pick)
        logger.debug("batch of %d rows (bucket %d x %d): %d steps", len(suffixes),
                     *bucket.mask.shape[::3], tokens.shape[1])
        return cut_after_eos(tokens[: len(suffixes)].cpu(), self._eos_ids())

    def _prefill_suffixes(self, bucket: _Bucket, prefix: _Prefix, suffixes: list[list[int]],
                          width: int) -> torch.Tensor:
        """Prefix keys into every row, then all suffixes in one pass; sets up the decode buffers.

        Returns the logits after each row's last suffix token.
        """
        device = self.model.device
        batch, _, length, _ = bucket.keys[0].shape
        # Dummy rows (up to the batch bucket) repeat the first suffix; their output is dropped.
        rows = suffixes + [suffixes[0]] * (batch - len(suffixes))
        lengths = torch.tensor([len(ids) for ids in rows], device=device)
        input_ids = torch.full((batch, width), self._pad_id(), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
        input_ids = input_ids.to(device)
        self._copy_prefix(bucket, prefix)

        pads = (width - lengths)[:, None]  # (B, 1)
        offsets = torch.arange(width, device=device)[None, :] - pads  # index in the suffix
        visible = torch.zeros(batch, length, dtype=torch.bool, device=device)
        visible[:, : prefix.length] = True
        visible[:, prefix.length : prefix.length + width] = offsets >= 0
        # Pads get a harmless position: nothing attends to them.
        positions = (prefix.next_position + offsets.clamp(min=0)).expand(3, -1, -1)
        columns = torch.arange(prefix.length, prefix.length + width, device=device)
        causal = torch.arange(length, device=device)[None, :] <= columns[:, None]  # (width, L)
        mask = additive(visible[:, None, :] & causal[None], self.model.dtype)[:, None]  # (B, 1, width, L)
        logits = self._forward(input_ids, positions, mask,
                               _CacheWriter(bucket.keys, bucket.values, columns))

        # The first generated token goes right after the suffixes, one position after each row's last.
        bucket.mask.copy_(additive(visible, self.model.dtype)[:, None, None, :])
        bucket.column.fill_(prefix.length + width)
        bucket.position_ids.copy_((prefix.next_position + lengths).view(1, batch, 1).expand(3, -1, -1))
        return logits

    @staticmethod
    def _copy_prefix(bucket: _Bucket, prefix: _Prefix) -> None:
        """The prefix keys/values into the first columns of every row of the bucket."""
        batch = bucket.keys[0].shape[0]
        for layer, (keys, values) in enumerate(zip(bucket.keys, bucket.values)):
            keys[:, :, : prefix.length].copy_(prefix.keys[layer].expand(batch, -1, -1, -1))
            values[:, :, : prefix.length].copy_(prefix.values[layer].expand(batch, -1, -1, -1))

    # --- decode --------------------------------------------------------------------------

    def _decode(self, bucket: _Bucket, logits: torch.Tensor, rows: int, max_new_tokens: int,
                pick) -> torch.Tensor:
        """(B, steps) generated tokens; rows that produced an eos get pad tokens after it."""
        eos = torch.tensor(self._eos_ids(), device=logits.device)
        pad = self._pad_id()
        finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
        tokens = []
        for step in range(max_new_tokens):
            token = torch.where(finished, pad, pick(logits))
            tokens.append(token)
            finished |= torch.isin(token, eos)
            if step == max_new_tokens - 1:
                break
            if (step + 1) % EOS_CHECK_EVERY == 0 and bool(finished[:rows].all()):
                break
            logits = self._step(bucket, token)
        return torch.stack(tokens, dim=1)

    def _step(self, bucket: _Bucket, token: torch.Tensor) -> torch.Tensor:
        """Feed ``token`` (B,) at the bucket's column; logits for the next token (B, vocab)."""
        bucket.input_ids.copy_(token[:, None])
        bucket.mask.index_fill_(3, bucket.column, 0.0)
        if self.model.device.type == "cuda" and self.use_cuda_graph:
            if bucket.graph is None:
                self._capture(bucket)
            bucket.graph.replay()
            logits = bucket.logits
        else:
            logits = self._decode_forward(bucket)
        # Set up the next step; the caller reads these logits before the next replay.
        bucket.column.add_(1)
        bucket.position_ids.add_(1)
        return logits

    def _decode_forward(self, bucket: _Bucket) -> torch.Tensor:
        cache = _CacheWriter(bucket.keys, bucket.values, bucket.column)
        return self._forward(bucket.input_ids, bucket.position_ids, bucket.mask, cache)

    def _capture(self, bucket: _Bucket) -> None:
        """Record the bucket's decode step (all graphs share one memory pool)."""
        started = time.perf_counter()
        if self._graph_pool is None:
            self._graph_pool = torch.cuda.graph_pool_handle()
        bucket.graph, bucket.logits = capture_graph(self.model.device,
                                                    lambda: self._decode_forward(bucket),
                                                    self._graph_pool)
        batch, _, length, _ = bucket.keys[0].shape
        logger.info("captured the decode step for batch %d, cache length %d in %.2fs",
                    batch, length, time.perf_counter() - started)

    def _forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor,
                 cache: _CacheWriter) -> torch.Tensor:
        """Logits (B, vocab) after the last column: the text model's layers, called directly.

        Qwen3VLTextModel.forward would build its own mask from a 2D one (checks that sync with
        the host) and expects a transformers Cache; the layers take our 4D mask and writer as is.
        ``position_ids`` is (3, B, S): the t/h/w mrope axes.
        """
        text_model = self.model.model.language_model
        hidden = text_model.embed_tokens(input_ids)
        rotary = text_model.rotary_emb(hidden, position_ids)
        for layer in text_model.layers:
            hidden = layer(hidden, position_embeddings=rotary, attention_mask=mask, cache=cache)
        return self.model.lm_head(text_model.norm(hidden[:, -1]))

    # --- static memory -------------------------------------------------------------------

    def _bucket(self, batch: int, length: int) -> _Bucket:
        if (batch, length) not in self._buckets:
            self._reserve(batch * length)
            self._buckets[(batch, length)] = self._new_bucket(batch, length)
        return self._buckets[(batch, length)]

    def _reserve(self, tokens: int) -> None:
        """Grow the storage to ``tokens`` cache slots per layer; growing moves it, so graphs go."""
        config = self.model.config.text_config
        elements = tokens * config.num_key_value_heads * config.head_dim
        if kv_storage_fits(self._storage, self.model, elements):
            return
        self.release()  # free the old storage before the new one takes its place
        self._storage = new_kv_storage(self.model, elements)
        logger.info("static KV cache: %d slots per layer, %.2f GiB", tokens,
                    self._storage.numel() * self._storage.element_size() / 2**30)

    def _new_bucket(self, batch: int, length: int) -> _Bucket:
        config = self.model.config.text_config
        shape = (batch, config.num_key_value_heads, length, config.head_dim)
        elements = batch * length * config.num_key_value_heads * config.head_dim
        # Every bucket views the start of the same storage: contiguous, and no extra memory.
        views = [self._storage[i, :elements].view(shape) for i in range(self._storage.shape[0])]
        device, dtype = self.model.device, self.model.dtype
        return _Bucket(
            keys=views[0::2],
            values=views[1::2],
            input_ids=torch.zeros(batch, 1, dtype=torch.long, device=device),
            position_ids=torch.zeros(3, batch, 1, dtype=torch.long, device=device),
            column=torch.zeros(1, dtype=torch.long, device=device),
            mask=torch.zeros(batch, 1, 1, length, dtype=dtype, device=device),
        )

    def _drop_graphs_if_weights_moved(self) -> None:
        """Graphs hold the weights' addresses; a residency swap-in gives the weights new memory."""
        pointers = weight_pointers(self.model)
        if pointers != self._weight_pointers:
            self._buckets.clear()
            self._weight_pointers = pointers

    # --- helpers -------------------------------------------------------------------------

    def _eos_ids(self) -> list[int]:
        return eos_token_ids(self.model)

    def _pad_id(self) -> int:
        return pad_token_id(self.model, self.processor)
