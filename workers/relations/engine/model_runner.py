"""Runs a ``StepPlan`` in one forward and samples the rows' next tokens.

The step's tokens (running rows' next tokens, then prefill chunks of rows and image
prefixes) are one flat sequence through the text layers; attention reads and writes the
paged cache at the slots of each sequence's blocks. An image's prefix goes through the
vision tower when its first chunk runs; its embeddings are kept until its last chunk has.
"""

from __future__ import annotations

import itertools

import torch

from workers.relations.cascade_attention import flash_available
from workers.relations.decoding import PhaseClock, pick_tokens
from workers.relations.engine.attention import (
    FlashAttention,
    FlashStep,
    ReferenceAttention,
    SequenceGroup,
    StepAttention,
)
from workers.relations.engine.kv_cache import BlockPool, KVCache
from workers.relations.engine.qwen3_vl import PrefixInputs, Qwen3VL
from workers.relations.engine.scheduler import Chunk, Prefix, Row, StepPlan
from workers.relations.image_inputs import ImageInputs


class ModelRunner:
    """One call's forwards over ``cache``, whose blocks ``blocks`` hands out."""

    def __init__(self, model: Qwen3VL, cache: KVCache, blocks: BlockPool, images: ImageInputs, *,
                 temperature: float, seed: int, clock: PhaseClock) -> None:
        self.model, self.cache, self.blocks, self.images = model, cache, blocks, images
        self.clock = clock
        # Flash attention where it runs (CUDA, bf16/fp16); the torch reference elsewhere.
        self.flash = flash_available(model.device, model.dtype, model.head_dim)
        self.prefixes: dict[int, PrefixInputs] = {}  # images whose prefix is being prefilled
        self.next_position: dict[int, int] = {}  # the text position after each image's prefix
        self.prefix_slots: dict[tuple[int, int], torch.Tensor] = {}  # (image, id) -> device slots
        config = model.model.generation_config
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=model.device).manual_seed(seed)
        self.pick = lambda logits: pick_tokens(logits, temperature=temperature, top_k=config.top_k,
                                               top_p=config.top_p, generator=generator)

    def run(self, plan: StepPlan) -> list[int]:
        """The next token of each ``plan.sampling`` chunk's row, in order."""
        for chunk in plan.prefill:
            if isinstance(chunk.sequence, Prefix) and chunk.start == 0:
                self._encode(chunk.sequence)
        # Steps of running rows' next tokens alone, apart from those that also prefill.
        with self.clock.phase("mixed" if plan.prefill else "decode"):
            chunks = plan.chunks
            offsets = token_offsets(plan)
            embeds, positions, deepstack = self._inputs(chunks, offsets)
            if self.flash:
                attention = FlashAttention(self.cache.keys, self.cache.values,
                                           self.flash_step(plan, offsets))
            else:
                attention = ReferenceAttention(self.cache.keys, self.cache.values,
                                               self.reference_step(plan, offsets))
            hidden = self.model.forward(embeds, positions, attention, deepstack)
            last = [offsets[i + 1] - 1 for i, chunk in enumerate(chunks) if chunk.samples]
            tokens = []
            if last:
                tokens = self.pick(self.model.logits(hidden[last])).tolist()
        for chunk in plan.prefill:
            if isinstance(chunk.sequence, Prefix) and chunk.end == chunk.sequence.length:
                del self.prefixes[chunk.sequence.image]
        return tokens

    def _encode(self, prefix: Prefix) -> None:
        with self.clock.phase("vision"):
            inputs = self.model.encode_prefix(self.images.take(prefix.image))
        if inputs.length != prefix.length:
            raise RuntimeError(f"an image's prefix has {inputs.length} tokens, not the "
                               f"{prefix.length} counted from its size")
        self.prefixes[prefix.image] = inputs
        self.next_position[prefix.image] = inputs.next_position

    # --- the flat inputs -----------------------------------------------------------------

    def _inputs(self, chunks: list[Chunk], offsets: list[int]):
        """(embeddings (T, hidden), positions (3, T), deepstack features or None)."""
        device = self.model.device
        ids, id_places, id_positions = [], [], []
        positions = torch.empty(3, offsets[-1], dtype=torch.long)
        prefix_parts, visual_places, visual_rows = [], [], []
        for chunk, offset in zip(chunks, offsets):
            places = slice(offset, offset + chunk.count)
            sequence = chunk.sequence
            if isinstance(sequence, Row):
                ids += sequence.tokens(chunk.start, chunk.end)
                id_places += range(offset, offset + chunk.count)
                first = self.next_position[sequence.image]
                id_positions += range(first + chunk.start, first + chunk.end)
                continue
            inputs = self.prefixes[sequence.image]
            prefix_parts.append((offset, inputs.embeds[chunk.start:chunk.end]))
            positions[:, places] = inputs.positions[:, chunk.start:chunk.end]
            rank = inputs.visual_rank[chunk.start:chunk.end]
            visual_places.append(torch.nonzero(rank >= 0)[:, 0] + offset)
            visual_rows.append((inputs, rank[rank >= 0]))
        if id_places:
            positions[:, id_places] = torch.tensor(id_positions)
        embeds = torch.empty(offsets[-1], self.model.model.config.text_config.hidden_size,
                             dtype=self.model.dtype, device=device)
        if ids:
            places = torch.tensor(id_places, device=device)
            embeds[places] = self.model.embed(torch.tensor(ids, device=device))
        for offset, part in prefix_parts:
            embeds[offset:offset + part.shape[0]] = part
        deepstack = None
        if visual_rows and sum(len(rows) for _, rows in visual_rows):
            layers = len(visual_rows[0][0].deepstack)
            features = [torch.cat([inputs.deepstack[layer][rows.to(device)]
                                   for inputs, rows in visual_rows]) for layer in range(layers)]
            deepstack = (torch.cat(visual_places).to(device), features)
        return embeds, positions.to(device), deepstack

    # --- who reads what ------------------------------------------------------------------

    def reference_step(self, plan: StepPlan, offsets: list[int]) -> StepAttention:
        slots, groups = [], []
        if plan.decode:
            starts = torch.tensor([chunk.start for chunk in plan.decode])[:, None]
            slots.append(self._slots([chunk.sequence for chunk in plan.decode], starts)[:, 0])
            groups.append(self._group(plan.decode, offsets[:len(plan.decode)], plan))
        for index, chunk in enumerate(plan.prefill, start=len(plan.decode)):
            slots.append(self._slots([chunk.sequence], torch.arange(chunk.start, chunk.end)[None])[0])
            groups.append(self._group([chunk], [offsets[index]], plan))
        return StepAttention(slots=torch.cat(slots), groups=groups)

    def _group(self, chunks: list[Chunk], offsets: list[int], plan: StepPlan) -> SequenceGroup:
        width = max(chunk.count for chunk in chunks)
        step = torch.arange(width)[None]
        counts = torch.tensor([chunk.count for chunk in chunks])[:, None]
        starts = torch.tensor([chunk.start for chunk in chunks])[:, None]
        used = torch.tensor([chunk.end for chunk in chunks])
        device = self.model.device
        group = SequenceGroup(
            tokens=(torch.tensor(offsets)[:, None] + step.minimum(counts - 1)).to(device),
            valid=(step < counts).to(device),
            positions=(starts + step.minimum(counts - 1)).to(device),
            own_slots=self._slots([c.sequence for c in chunks], self._columns(used)),
            own_used=used.to(device))
        if isinstance(chunks[0].sequence, Row):
            prefixes = [plan.prefixes[chunk.sequence.image] for chunk in chunks]
            lengths = torch.tensor([prefix.length for prefix in prefixes])
            group.prefix_slots = self._slots(prefixes, self._columns(lengths))
            group.prefix_used = lengths.to(device)
        return group

    def flash_step(self, plan: StepPlan, offsets: list[int]) -> FlashStep:
        """Built on the host in plain lists (a step has ~1,000 tokens of ~500 sequences), then
        moved to the device in one copy per tensor."""
        size, device = self.blocks.block_size, self.model.device
        slots: list[int] = []
        rows: list[Row] = []
        by_image: dict[int, tuple[list[int], list[int], list[int]]] = {}
        chunk_tokens, chunk_counts, chunk_slots, chunk_keys = [], [], [], []
        for chunk, offset in zip(plan.chunks, offsets):
            table = self.blocks.table(chunk.sequence)
            slots += [table[p // size] * size + p % size for p in range(chunk.start, chunk.end)]
            places = range(offset, offset + chunk.count)
            if isinstance(chunk.sequence, Row):
                tokens, token_row, token_used = by_image.setdefault(chunk.sequence.image,
                                                                    ([], [], []))
                tokens += places
                token_row += [len(rows)] * chunk.count
                token_used += range(chunk.start + 1, chunk.end + 1)
                rows.append(chunk.sequence)
                continue
            chunk_tokens += places
            chunk_counts.append(chunk.count)
            chunk_keys.append(chunk.end)
            chunk_slots += [table[p // size] * size + p % size for p in range(chunk.end)]
        prefixes = [plan.prefixes[image] for image in by_image]
        prefix_slots = [self._prefix_slots(prefix) for prefix in prefixes]
        tables = [self.blocks.table(row) for row in rows]
        width = max((len(table) for table in tables), default=1)
        parts = list(by_image.values())
        query_counts = [len(tokens) for tokens, _, _ in parts]
        lengths = [prefix.length for prefix in prefixes]

        def long(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long).to(device, non_blocking=True)

        def int32(values) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32).to(device, non_blocking=True)

        def starts_of(sizes) -> torch.Tensor:
            return int32([0, *itertools.accumulate(sizes)])

        return FlashStep(
            slots=long(slots), block_size=size,
            row_tokens=long([t for tokens, _, _ in parts for t in tokens]),
            row_tables=int32([table + [0] * (width - len(table)) for table in tables] or [[0]]),
            token_row=int32([r for _, token_row, _ in parts for r in token_row]),
            token_used=int32([u for _, _, token_used in parts for u in token_used]),
            prefix_query_starts=starts_of(query_counts),
            prefix_slots=torch.cat(prefix_slots) if prefix_slots else long([]),
            prefix_starts=starts_of(lengths), most_prefix_queries=max(query_counts, default=0),
            most_prefix=max(lengths, default=0),
            chunk_tokens=long(chunk_tokens), chunk_query_starts=starts_of(chunk_counts),
            chunk_slots=long(chunk_slots), chunk_key_starts=starts_of(chunk_keys),
            most_chunk_queries=max(chunk_counts, default=0),
            most_chunk_keys=max(chunk_keys, default=0))

    def _prefix_slots(self, prefix: Prefix) -> torch.Tensor:
        """The cache slots of an image's prefix (its blocks are held whole while it is loaded)."""
        key = (prefix.image, id(prefix))
        if key not in self.prefix_slots:
            size, table = self.blocks.block_size, self.blocks.table(prefix)
            self.prefix_slots = {k: v for k, v in self.prefix_slots.items() if k[0] != prefix.image}
            self.prefix_slots[key] = torch.tensor(
                [table[p // size] * size + p % size for p in range(prefix.length)],
                dtype=torch.long).to(self.model.device)
        return self.prefix_slots[key]

    @staticmethod
    def _columns(used: torch.Tensor) -> torch.Tensor:
        """(S, max used) positions 0.., each row's cut at its last used one (padding repeats it)."""
        return torch.arange(int(used.max()))[None].minimum(used[:, None] - 1)

    def _slots(self, sequences: list, positions: torch.Tensor) -> torch.Tensor:
        """Cache slots of ``positions[s]`` of ``sequences[s]`` (host positions, device slots)."""
        tables = [self.blocks.table(sequence) for sequence in sequences]
        width = max(len(table) for table in tables)
        padded = torch.tensor([table + [0] * (width - len(table)) for table in tables])
        return self.cache.slots(padded, positions)


def token_offsets(plan: StepPlan) -> list[int]:
    """Where each of the plan's chunks starts among the step's tokens, and the total last."""
    offsets = [0]
    for chunk in plan.chunks:
        offsets.append(offsets[-1] + chunk.count)
    return offsets
