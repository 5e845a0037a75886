"""Runs a ``StepPlan`` in one forward and samples the rows' next tokens.

The step's tokens (running rows' next tokens, then prefill chunks of rows and image
prefixes) are one flat sequence through the text layers; attention reads and writes the
paged cache at the slots of each sequence's blocks. An image's prefix goes through the
vision tower when its first chunk runs; its embeddings are kept until its last chunk has.
"""

from __future__ import annotations


import torch

from workers.relations.decoding import PhaseClock, pick_tokens
from workers.relations.engine.attention import ReferenceAttention, SequenceGroup, StepAttention
from workers.relations.engine.kv_cache import BlockPool, KVCache
from workers.relations.engine.qwen3_vl import PrefixInputs, Qwen3VL
from workers.relations.engine.scheduler import Chunk, Prefix, Row, StepPlan
from workers.relations.engine.static_step import StaticStep
from workers.relations.engine.step_inputs import Places, fill
from workers.relations.image_inputs import ImageInputs


class ModelRunner:
    """One call's forwards over ``cache``, whose blocks ``blocks`` hands out."""

    def __init__(self, model: Qwen3VL, cache: KVCache, blocks: BlockPool, images: ImageInputs, *,
                 temperature: float, seed: int, clock: PhaseClock,
                 static: StaticStep | None = None) -> None:
        self.model, self.cache, self.blocks, self.images = model, cache, blocks, images
        self.clock = clock
        # The step's buffers and graphs with the Triton kernels (CUDA, bf16/fp16); None: the
        # torch reference (the CPU, float32).
        self.static = static
        self.prefixes: dict[int, PrefixInputs] = {}  # images whose prefix is being prefilled
        self.next_position: dict[int, int] = {}  # the text position after each image's prefix
        self.places = Places()  # rows' and images' places in the step's block tables
        # Where a step's sampled tokens land on the host: two, for a step and the next.
        self._host_tokens = _HostTokens(model.device, static.capacity.tokens if static else 0)
        config = model.model.generation_config
        generator = None
        if temperature > 0:
            generator = torch.Generator(device=model.device).manual_seed(seed)
        self.pick = lambda logits: pick_tokens(logits, temperature=temperature, top_k=config.top_k,
                                               top_p=config.top_p, generator=generator)

    def run(self, plan: StepPlan) -> list[int]:
        """The next token of each ``plan.sampling`` chunk's row, in order."""
        return self.launch(plan).tokens()

    def launch(self, plan: StepPlan, previous: Launched | None = None) -> Launched:
        """``plan``'s step, queued on the device; its tokens come with ``tokens()``. A
        PENDING token of a row (sampled by ``previous``, still on the device) is taken from
        ``previous``'s samples on the device: the host plans ahead without waiting."""
        for chunk in plan.prefill:
            if isinstance(chunk.sequence, Prefix) and chunk.start == 0:
                self._encode(chunk.sequence)
        # Steps of running rows' next tokens alone, apart from those that also prefill.
        with self.clock.phase("mixed" if plan.prefill else "decode"):
            if self.static is None:
                hidden = self._reference_forward(plan)
            else:
                hidden = self._static_forward(plan, previous)
            samples = torch.empty(0, dtype=torch.long, device=hidden.device)
            if hidden.shape[0]:
                samples = self.pick(self.model.logits(hidden))
        for chunk in plan.prefill:
            if isinstance(chunk.sequence, Prefix) and chunk.end == chunk.sequence.length:
                del self.prefixes[chunk.sequence.image]
        return Launched(plan, samples, self._host_tokens)

    def _reference_forward(self, plan: StepPlan) -> torch.Tensor:
        """The sampling tokens' final hidden states, attention in plain products."""
        offsets = token_offsets(plan)
        embeds, positions, deepstack = self._inputs(plan.chunks, offsets)
        attention = ReferenceAttention(self.cache.keys, self.cache.values,
                                       self.reference_step(plan, offsets))
        hidden = self.model.forward(embeds, positions, attention, deepstack)
        return hidden[[offsets[i + 1] - 1 for i, chunk in enumerate(plan.chunks) if chunk.samples]]

    def _static_forward(self, plan: StepPlan, previous: Launched | None) -> torch.Tensor:
        """The sampling tokens' final hidden states, from the step's buffers (a CUDA graph)."""
        static = self.static
        layout = fill(static.inputs, plan, self.blocks, self.next_position,
                      {image: inputs.positions for image, inputs in self.prefixes.items()},
                      self.cache.scratch_slot, self.places,
                      previous.places() if previous is not None else {})
        static.inputs.upload()
        fields, bucket = static.inputs.device, layout.bucket
        ids = fields["ids"][:bucket].long()
        if previous is not None and previous.samples.numel():
            from_previous = fields["previous"][:bucket]
            ids = torch.where(from_previous >= 0,
                              previous.samples[from_previous.clamp(min=0).long()], ids)
        static.embeds[:bucket] = self.model.embed(ids)
        visual = []
        for image, start, end, place in layout.prefix_chunks:
            inputs = self.prefixes[image]
            static.embeds[place:place + end - start] = inputs.embeds[start:end]
            rank = inputs.visual_rank[start:end]
            where = torch.nonzero(rank >= 0)[:, 0]
            if where.numel():
                places = (where + place).to(static.embeds.device)
                ranks = rank[where].to(static.embeds.device)
                for layer, features in enumerate(inputs.deepstack):
                    static.deepstack[layer, places] = features[ranks]
                visual.append(places)
        hidden = static.run(bucket)[fields["samples"][:layout.samples].long()]
        for places in visual:  # the next step's image tokens are elsewhere
            static.deepstack[:, places] = 0
        return hidden

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


class _HostTokens:
    """Pinned host buffers the sampled tokens are copied into without a wait, taken in turn:
    a step's tokens stay readable while the next step's are being copied."""

    def __init__(self, device: torch.device, size: int) -> None:
        pinned = device.type == "cuda"
        self.buffers = [torch.empty(size, dtype=torch.long, pin_memory=pinned) for _ in range(2)]
        self.turn = 0

    def next(self) -> torch.Tensor:
        self.turn ^= 1
        return self.buffers[self.turn]


class Launched:
    """A step queued on the device: its plan, its sampled tokens (on the device), and their
    copy to the host, read by ``tokens()``."""

    def __init__(self, plan: StepPlan, samples: torch.Tensor, host: _HostTokens) -> None:
        self.plan, self.samples = plan, samples
        self._event = None
        if samples.device.type == "cuda" and samples.numel():
            self._host = host.next()[:samples.numel()]
            self._host.copy_(samples, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def tokens(self) -> list[int]:
        """The sampled tokens, waiting for this step only (not for steps queued after it)."""
        if self._event is None:
            return self.samples.tolist()
        self._event.synchronize()
        return self._host.tolist()

    def places(self) -> dict[Row, int]:
        """Each sampling row's place among the samples."""
        return {chunk.sequence: index for index, chunk in enumerate(self.plan.sampling)}
