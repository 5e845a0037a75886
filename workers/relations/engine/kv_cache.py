"""The one owner of the paged engine's keys and values.

Memory is cut into blocks of ``block_size`` tokens (every layer's keys and values for them).
A sequence (an image's prefix, or a row: one prompt's suffix and what it generates) holds a
table of blocks, taken as it grows and given back when it ends; an image's prefix is held
once, for all of its rows. ``BlockPool`` is the host's bookkeeping (the scheduler plans with
it, never touching the device); ``KVCache`` is the device storage the blocks index.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

# Tokens per block: a row wastes less than one block at its end.
BLOCK_SIZE = 16
# The pool on a CPU (the tiny models, tests): a fixed modest size, whatever the host has.
CPU_POOL_BYTES = 256 * 2**20


class BlockPool:
    """Which blocks are free and which sequence holds which, on the host."""

    def __init__(self, blocks: int, block_size: int = BLOCK_SIZE) -> None:
        if blocks < 1 or block_size < 1:
            raise ValueError("a block pool needs at least one block of at least one token")
        self.blocks, self.block_size = blocks, block_size
        self._free = list(range(blocks - 1, -1, -1))  # popped from the end: block 0 first
        self._tables: dict[object, list[int]] = {}

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def table(self, sequence: object) -> list[int]:
        """The blocks ``sequence`` holds, in token order."""
        return self._tables.get(sequence, [])

    def can_hold(self, sequence: object, tokens: int) -> bool:
        """Whether ``sequence`` could grow to ``tokens`` tokens now."""
        return self.blocks_for(tokens) - len(self.table(sequence)) <= len(self._free)

    def hold(self, sequence: object, tokens: int) -> None:
        """Grow ``sequence``'s table to cover ``tokens`` tokens (check ``can_hold`` first)."""
        table = self._tables.setdefault(sequence, [])
        missing = self.blocks_for(tokens) - len(table)
        if missing > len(self._free):
            raise RuntimeError(f"{missing} blocks asked for, {len(self._free)} free")
        table.extend(self._free.pop() for _ in range(max(0, missing)))

    def release(self, sequence: object) -> None:
        """Give back every block ``sequence`` holds."""
        self._free.extend(reversed(self._tables.pop(sequence, [])))


def bytes_per_block(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                    block_size: int = BLOCK_SIZE) -> int:
    """Bytes of one block: keys and values of ``block_size`` tokens in every layer."""
    return 2 * layers * kv_heads * head_dim * block_size * (torch.finfo(dtype).bits // 8)


def pool_blocks(wanted: int, block_bytes: int, device: torch.device,
                cache_bytes: int | None) -> int:
    """Blocks to allocate: what the call wants, at most what the memory left after the
    weights holds (``cache_bytes``; on a GPU without it, 90% of the free memory; on a CPU a
    fixed modest pool)."""
    if device.type == "cpu":
        room = CPU_POOL_BYTES if cache_bytes is None else min(cache_bytes, CPU_POOL_BYTES)
    elif cache_bytes is None:
        room = int(torch.cuda.mem_get_info(device)[0] * 0.9)
    else:
        room = cache_bytes
    return min(wanted, room // block_bytes)


class KVCache:
    """Keys and values of every layer, each (blocks x block_size, kv_heads, head_dim): token
    ``t`` of a sequence whose table is ``table`` is at ``table[t // block_size] * block_size +
    t % block_size``. Zeros, not empty: padded reads are multiplied by 0, and 0 x NaN is NaN.
    One more block than the pool's, which no sequence holds: padding tokens of a step replayed
    at a fixed size write their keys there (``scratch_slot``)."""

    def __init__(self, *, layers: int, kv_heads: int, head_dim: int, blocks: int,
                 block_size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.blocks, self.block_size = blocks, block_size
        self.scratch_slot = blocks * block_size
        storage = torch.zeros(2 * layers, (blocks + 1) * block_size, kv_heads, head_dim,
                              dtype=dtype, device=device)
        self.keys, self.values = list(storage[0::2]), list(storage[1::2])
        self.bytes = storage.numel() * storage.element_size()
        self.dtype, self.device = dtype, device

    def fits(self, blocks: int, block_size: int, dtype: torch.dtype, device: torch.device) -> bool:
        """Whether this storage serves a pool of ``blocks`` blocks of this kind."""
        return (self.blocks >= blocks and self.block_size == block_size and self.dtype == dtype
                and self.device == device)

    def slots(self, tables: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Storage indices of token ``positions[s, j]`` of the sequence whose block table is
        ``tables[s]`` (host tensors in, a device tensor out)."""
        blocks = tables.gather(1, positions // self.block_size)
        return (blocks * self.block_size + positions % self.block_size).to(self.device)
