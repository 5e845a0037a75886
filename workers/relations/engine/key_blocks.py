"""What both attention kernels of the paged engine do per block of keys: read it in place
from a sequence's cache blocks, and fold it into an online softmax.

A block of ``BLOCK`` keys is read through the sequence's block table (``BLOCK_SIZE`` tokens
a cache block), for one kv head. Each block's scores update a running maximum, the sum of exponentials
under it, and the weighted values (Milakov and Gimelshein, "Online normalizer calculation for
softmax", 2018; as flash attention does). Queries that see no key of a block, or none at all,
keep weight 0: never exp(-inf - -inf).
"""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl


@dataclass(frozen=True)
class Launch:
    """How a kernel runs: keys read per iteration, warps per program, and the software
    pipeline's stages (Triton's ``num_stages``: blocks of keys in flight, each one
    ``block_keys`` x the head size x 2 (keys and values) in shared memory)."""

    block_keys: int = 64
    warps: int = 4
    stages: int = 3


@triton.jit
def read_block(keys, values, table, start, limit, kv_head, key_slot_stride, key_head_stride,
               BLOCK_SIZE: tl.constexpr, DIM: tl.constexpr, BLOCK: tl.constexpr):
    """(keys (BLOCK, DIM), values, their columns (BLOCK,)) of columns ``start..`` of the
    sequence whose block table is ``table``; columns from ``limit`` on read as zeros."""
    columns = start + tl.arange(0, BLOCK)
    inside = columns < limit
    block = tl.load(table + columns // BLOCK_SIZE, mask=inside, other=0).to(tl.int64)
    slots = block * BLOCK_SIZE + columns % BLOCK_SIZE
    offsets = (slots[:, None] * key_slot_stride + kv_head * key_head_stride
               + tl.arange(0, DIM)[None, :])
    key = tl.load(keys + offsets, mask=inside[:, None], other=0.0)
    value = tl.load(values + offsets, mask=inside[:, None], other=0.0)
    return key, value, columns


@triton.jit
def attend_block(query, key, value, visible, maximum, total, accumulator):
    """Queries (M, D) over one block of keys and values (N, D) where ``visible`` (M, N):
    the running (maximum (M,), total (M,), accumulator (M, D)) after it, in float32."""
    scores = tl.dot(query, tl.trans(key))
    scores = tl.where(visible, scores, float("-inf"))
    new_maximum = tl.maximum(maximum, tl.max(scores, 1))
    safe = tl.where(new_maximum == float("-inf"), 0.0, new_maximum)
    weights = tl.exp(scores - safe[:, None])
    rescale = tl.exp(maximum - safe)
    total = total * rescale + tl.sum(weights, 1)
    accumulator = accumulator * rescale[:, None] + tl.dot(weights.to(value.dtype), value)
    return new_maximum, total, accumulator


@triton.jit
def finish(maximum, total, accumulator):
    """(output (M, D), log-sum-exp (M,)): zeros and -inf for a query that saw no key."""
    seen = total > 0
    output = accumulator / tl.where(seen, total, 1.0)[:, None]
    return output, tl.where(seen, maximum + tl.log(tl.where(seen, total, 1.0)), float("-inf"))
