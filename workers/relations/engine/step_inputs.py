"""A step's inputs on the device, in buffers of fixed size: what a CUDA graph replays over.

Everything the step's forward reads besides the hidden states (token ids, mrope positions,
the cache slots its keys go to, who attends to what) is written on the host into one pinned
int32 buffer and moved to the device in one copy. Each field has a fixed place sized for the
largest step (``Capacity``), so the device views of a step of ``B`` tokens (its bucket) are
the same tensors at every step of that bucket: what a graph captured once reads again.

Tokens past the step's own (up to the bucket) are padding: their keys go to a scratch slot
no sequence holds, they attend to nothing, and nothing reads their outputs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from workers.relations.engine.kv_cache import BlockPool
from workers.relations.engine.scheduler import PENDING, Row, StepPlan

# Step token counts a graph is captured for: a step runs in the smallest that holds it.
SMALL_BUCKETS = (16, 32, 64, 128, 256)
BUCKET_STEP = 256
# Queries per program of the prefix kernel (tokens x the query heads of one kv head): one
# tensor-core tile.
TILE_QUERIES = 64


def tile_tokens(group: int) -> int:
    """Tokens per prefix tile for ``group`` query heads per kv head."""
    return max(1, TILE_QUERIES // (1 << (group - 1).bit_length()))


def bucket_for(tokens: int) -> int:
    for size in SMALL_BUCKETS:
        if tokens <= size:
            return size
    return -(-tokens // BUCKET_STEP) * BUCKET_STEP


@dataclass(frozen=True)
class Capacity:
    """The largest step the buffers hold: tokens, rows and their blocks, loaded images and
    their prefixes' blocks, query heads per kv head."""

    tokens: int
    rows: int
    row_blocks: int
    images: int
    prefix_blocks: int
    group: int

    @property
    def tiles(self) -> int:
        return self.tiles_for(self.tokens)

    def tiles_for(self, tokens: int) -> int:
        """Tiles of a step of ``tokens``: each image's tokens cut in tiles, one partial each."""
        return -(-tokens // tile_tokens(self.group)) + self.images

    def holds(self, other: Capacity) -> bool:
        return all(getattr(self, name) >= getattr(other, name) for name in
                   ("tokens", "rows", "row_blocks", "images", "prefix_blocks")) and \
            self.group == other.group

    def rounded(self) -> Capacity:
        """Room to spare, so that the next calls of a run (a little longer, a few more
        images) fit the same buffers and graphs."""
        return Capacity(tokens=bucket_for(self.tokens), rows=_up(self.rows, 64),
                        row_blocks=_up(self.row_blocks, 64), images=_up(self.images, 64),
                        prefix_blocks=_up(self.prefix_blocks, 128), group=self.group)


def _up(value: int, step: int) -> int:
    return max(step, -(-value // step) * step)


class StepInputs:
    """The fields, as host (numpy) and device views of one int32 buffer each."""

    def __init__(self, capacity: Capacity, device: torch.device) -> None:
        self.capacity = capacity
        tokens, tiles = capacity.tokens, capacity.tiles
        shapes = {
            "ids": (tokens,), "positions": (3, tokens), "slots": (tokens,),
            "token_row": (tokens,), "own_used": (tokens,), "prefix_used": (tokens,),
            "order": (tokens,), "samples": (tokens,), "previous": (tokens,),
            "tile_image": (tiles,), "tile_start": (tiles,), "tile_end": (tiles,), "tile_count": (1,),
            "row_tables": (capacity.rows, capacity.row_blocks),
            "prefix_tables": (capacity.images, capacity.prefix_blocks),
        }
        sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
        total = sum(sizes.values())
        pinned = device.type == "cuda"
        self._host = torch.zeros(total, dtype=torch.int32, pin_memory=pinned)
        self._uploaded: torch.cuda.Event | None = None
        self._device = torch.zeros(total, dtype=torch.int32, device=device)
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, torch.Tensor] = {}
        array = self._host.numpy()
        for (name, shape), start in zip(shapes.items(), itertools.accumulate([0, *sizes.values()])):
            self.host[name] = array[start:start + sizes[name]].reshape(shape)
            self.device[name] = self._device[start:start + sizes[name]].view(shape)

    def views(self, bucket: int) -> dict[str, torch.Tensor]:
        """The device fields of a step of ``bucket`` tokens: the per-token ones cut to it."""
        views = dict(self.device)
        for name in _PER_TOKEN:
            views[name] = self.device[name][:bucket]
        views["positions"] = self.device["positions"][:, :bucket]
        return views

    def upload(self) -> None:
        """The host's fields to the device (one copy, ordered on the current stream)."""
        self._device.copy_(self._host, non_blocking=True)
        if self._device.is_cuda:
            self._uploaded = torch.cuda.Event()
            self._uploaded.record()

    def writable(self) -> None:
        """Wait until the last upload has read the host's fields (a step planned ahead writes
        them while the one before may still be queued)."""
        if self._uploaded is not None:
            self._uploaded.synchronize()


# Fields with one entry per token.
_PER_TOKEN = ("ids", "slots", "token_row", "own_used", "prefix_used", "order", "samples",
              "previous")


@dataclass
class StepLayout:
    """What the host side of a step knows beyond the buffers: its token count, its bucket,
    the sampled tokens' count, and where image prefixes' embeddings go."""

    tokens: int
    bucket: int
    samples: int
    prefix_chunks: list[tuple[int, int, int, int]]  # (image, start, end, place of start)


class Places:
    """Which row of ``row_tables`` each running row has, and of ``prefix_tables`` each loaded
    image, kept from step to step: a row's table is written again only where it took blocks
    since (a step has ~1,000 rows of ~20 blocks; the host writes only a few)."""

    def __init__(self) -> None:
        self.rows: dict[Row, int] = {}
        self.written: dict[Row, tuple[list[int], int]] = {}  # (its table, entries written)
        self.images: dict[int, int] = {}
        self._free_rows: list[int] = []
        self._free_images: list[int] = []

    def keep(self, running: set[Row], loaded: set[int]) -> None:
        """Rows and images not in this step give their places back."""
        for row in [row for row in self.rows if row not in running]:
            self._free_rows.append(self.rows.pop(row))
            del self.written[row]
        for image in [image for image in self.images if image not in loaded]:
            self._free_images.append(self.images.pop(image))

    def row(self, row: Row, table: list[int], row_tables: np.ndarray) -> int:
        place = self.rows.get(row)
        if place is None:
            place = self.rows[row] = (self._free_rows.pop() if self._free_rows
                                      else len(self.rows))
        known, count = self.written.get(row, (None, 0))
        if known is not table:  # new, or preempted and started again on other blocks
            count = 0
        if count < len(table):
            row_tables[place, count:len(table)] = table[count:]
            self.written[row] = (table, len(table))
        return place

    def image(self, image: int) -> int:
        if image not in self.images:
            self.images[image] = (self._free_images.pop() if self._free_images
                                  else len(self.images))
        return self.images[image]


def fill(inputs: StepInputs, plan: StepPlan, blocks: BlockPool, next_position: dict[int, int],
         prefix_positions: dict[int, torch.Tensor], scratch_slot: int, places: Places,
         previous: dict[Row, int]) -> StepLayout:
    """Write ``plan``'s fields into ``inputs``' host buffers. ``previous``: each row's place
    among the samples of the step before, whose token it runs now while still PENDING."""
    inputs.writable()
    host, size = inputs.host, blocks.block_size
    tokens = plan.tokens
    ids, slots, token_row, own_used, prefix_used, samples = [], [], [], [], [], []
    from_previous = []
    positions = []  # text tokens': the same on the three mrope axes
    by_image: dict[int, list[int]] = {}
    prefix_chunks = []
    places.keep({chunk.sequence for chunk in plan.chunks if isinstance(chunk.sequence, Row)},
                set(plan.prefixes))
    for chunk in plan.chunks:
        sequence, start, end = chunk.sequence, chunk.start, chunk.end
        place = len(ids)
        table = blocks.table(sequence)
        by_image.setdefault(sequence.image, []).extend(range(place, place + chunk.count))
        slots += [table[p // size] * size + p % size for p in range(start, end)]
        if isinstance(sequence, Row):
            row_ids = sequence.tokens(start, end)
            ids += row_ids
            from_previous += [-1] * (chunk.count - 1)
            # A running row's next token, sampled by the step still on the device.
            from_previous.append(previous[sequence] if row_ids[-1] == PENDING else -1)
            first = next_position[sequence.image]
            positions += range(first + start, first + end)
            token_row += [places.row(sequence, table, host["row_tables"])] * chunk.count
            own_used += range(start + 1, end + 1)
            prefix_used += [plan.prefixes[sequence.image].length] * chunk.count
            if chunk.samples:
                samples.append(place + chunk.count - 1)
        else:
            ids += [0] * chunk.count
            from_previous += [-1] * chunk.count
            positions += [0] * chunk.count  # written below, per axis
            token_row += [0] * chunk.count
            own_used += [0] * chunk.count
            prefix_used += range(start + 1, end + 1)
            prefix_chunks.append((sequence.image, start, end, place))
    bucket = bucket_for(tokens)
    padding = bucket - tokens
    host["ids"][:bucket] = ids + [0] * padding
    host["slots"][:bucket] = slots + [scratch_slot] * padding
    host["token_row"][:bucket] = token_row + [0] * padding
    host["own_used"][:bucket] = own_used + [0] * padding
    host["prefix_used"][:bucket] = prefix_used + [0] * padding
    host["previous"][:bucket] = from_previous + [-1] * padding
    host["positions"][:, :bucket] = positions + [0] * padding
    for image, start, end, place in prefix_chunks:
        host["positions"][:, place:place + end - start] = prefix_positions[image][:, start:end]
    host["samples"][:len(samples)] = samples
    _tiles(inputs, by_image, plan, blocks, places)
    return StepLayout(tokens=tokens, bucket=bucket, samples=len(samples),
                      prefix_chunks=prefix_chunks)


def _tiles(inputs: StepInputs, by_image: dict[int, list[int]], plan: StepPlan,
           blocks: BlockPool, places: Places) -> None:
    """Tokens in image order, cut into tiles of one image each; the images' prefix tables."""
    host = inputs.host
    for image in by_image:
        table = blocks.table(plan.prefixes[image])
        host["prefix_tables"][places.image(image), :len(table)] = table
    order, tiles = cut_tiles({places.image(image): tokens for image, tokens in by_image.items()},
                             tile_tokens(inputs.capacity.group))
    host["order"][:len(order)] = order
    for name, values in zip(("tile_image", "tile_start", "tile_end"), zip(*tiles)):
        host[name][:len(tiles)] = values
    host["tile_count"][0] = len(tiles)


def cut_tiles(by_image: dict[int, list[int]], per_tile: int
              ) -> tuple[list[int], list[tuple[int, int, int]]]:
    """The tokens of ``by_image`` (image -> its tokens) in image order, and the prefix
    kernel's tiles over that order: (image, start, end), at most ``per_tile`` tokens of one
    image each."""
    order: list[int] = []
    tiles = []
    for image, tokens in by_image.items():
        place = len(order)
        order += tokens
        tiles += [(image, first, min(first + per_tile, len(order)))
                  for first in range(place, len(order), per_tile)]
    return order, tiles
