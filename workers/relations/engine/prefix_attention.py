"""Attention of a step's tokens over their image's prefix in the paged cache: a Triton kernel.

Every token of a step that reads an image's prefix (a row's token: all of the prefix; a
token of the prefix itself, still prefilling: the prefix up to its own position) is listed in
``order``, image after image, and cut into *tiles* of up to ``TILE_TOKENS`` tokens of one
image. One program per (tile, kv head) walks the image's block table once for the tile's
tokens and the ``group`` query heads that share the kv head (``TILE_TOKENS x group`` queries
in one matrix product), with an online softmax. Reading the prefix once per tile, not per
token, is what makes it cheap: an image's ~100 rows share its ~1,200 prefix tokens.

The launch's shape depends only on the step's capacity (``tiles`` rows of the tile map), never
on what the step holds: ``tile_count`` is read on the device, so a CUDA graph replays it for
any step of that capacity. Outputs and log-sum-exps are written at the tokens' places; the
rows' own part (workers/relations/engine/paged_attention.py) merges them.

``prefix_attention_reference`` is the same in plain torch (the tests' reference).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from workers.relations.engine.key_blocks import Launch, attend_block, finish, read_block
from workers.relations.engine.step_inputs import tile_tokens

LAUNCH = Launch()


@triton.jit
def _prefix_kernel(
    queries, keys, values, tables, order, token_used, tile_image, tile_start, tile_end,
    tile_count, output, lse,
    query_token_stride, query_head_stride, key_slot_stride, key_head_stride, table_stride,
    output_token_stride, output_head_stride, lse_token_stride,
    BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
    TOKENS: tl.constexpr, DIM: tl.constexpr, BLOCK: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    if tile >= tl.load(tile_count):
        return
    image = tl.load(tile_image + tile).to(tl.int64)
    first = tl.load(tile_start + tile)
    end = tl.load(tile_end + tile)
    query_rows = tl.arange(0, TOKENS * GROUP_PAD)
    place = first + query_rows // GROUP_PAD
    head_in_group = query_rows % GROUP_PAD
    ok = (place < end) & (head_in_group < GROUP)
    token = tl.load(order + place, mask=ok, other=0).to(tl.int64)
    used = tl.load(token_used + token, mask=ok, other=0)
    heads = kv_head * GROUP + head_in_group
    dims = tl.arange(0, DIM)
    query = tl.load(queries + token[:, None] * query_token_stride
                    + heads[:, None] * query_head_stride + dims[None, :],
                    mask=ok[:, None], other=0.0)  # (TOKENS * GROUP_PAD, DIM)
    most = tl.max(used, 0)
    maximum = tl.full([TOKENS * GROUP_PAD], float("-inf"), dtype=tl.float32)
    total = tl.zeros([TOKENS * GROUP_PAD], dtype=tl.float32)
    accumulator = tl.zeros([TOKENS * GROUP_PAD, DIM], dtype=tl.float32)
    table = tables + image * table_stride
    for start in range(0, most, BLOCK):
        key, value, columns = read_block(keys, values, table, start, most, kv_head,
                                         key_slot_stride, key_head_stride, BLOCK_SIZE, DIM, BLOCK)
        # A query sees its keys up to its own ``used`` (causal within a prefix being filled).
        maximum, total, accumulator = attend_block(query, key, value,
                                                   columns[None, :] < used[:, None], maximum,
                                                   total, accumulator)
    result, result_lse = finish(maximum, total, accumulator)
    tl.store(output + token[:, None] * output_token_stride + heads[:, None] * output_head_stride
             + dims[None, :], result.to(output.dtype.element_ty), mask=ok[:, None])
    tl.store(lse + token * lse_token_stride + heads, result_lse, mask=ok)


def prefix_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                     tables: torch.Tensor, order: torch.Tensor, token_used: torch.Tensor,
                     tile_image: torch.Tensor, tile_start: torch.Tensor, tile_end: torch.Tensor,
                     tile_count: torch.Tensor, block_size: int,
                     output: torch.Tensor, lse: torch.Tensor, launch: Launch = LAUNCH,
                     tokens: int | None = None) -> None:
    """Pre-scaled ``queries`` (T, H, D): token ``order[i]`` of tile ``t`` (``tile_start[t] <= i
    < tile_end[t]``, ``t < tile_count[0]``) over keys ``0..token_used[token]-1`` of the prefix
    whose block table is ``tables[tile_image[t]]``. Writes ``output`` (T, H, D) and ``lse``
    (T, H, float32) at those tokens' places (others are left as they are); int32 metadata.
    ``tokens``: tokens per tile, ``tile_tokens`` unless the tiles were cut otherwise."""
    heads, dim = queries.shape[1:]
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    if not tile_image.numel():
        return
    _prefix_kernel[(tile_image.numel(), kv_heads)](
        queries, keys, values, tables, order, token_used, tile_image, tile_start, tile_end,
        tile_count, output, lse,
        queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1), tables.stride(0),
        output.stride(0), output.stride(1), lse.stride(0),
        BLOCK_SIZE=block_size, GROUP=group, GROUP_PAD=triton.next_power_of_2(group),
        TOKENS=tokens or tile_tokens(group), DIM=dim, BLOCK=launch.block_keys,
        num_warps=launch.warps, num_stages=launch.stages)


def prefix_attention_reference(queries, keys, values, tables, order, token_used, tile_image,
                               tile_start, tile_end, tile_count, block_size: int,
                               output: torch.Tensor, lse: torch.Tensor) -> None:
    """``prefix_attention`` in float32 products, one token at a time."""
    heads, kv_heads = queries.shape[1], keys.shape[1]
    for tile in range(int(tile_count[0])):
        table = tables[int(tile_image[tile])].long()
        for place in range(int(tile_start[tile]), int(tile_end[tile])):
            token = int(order[place])
            columns = torch.arange(int(token_used[token]), device=queries.device)
            slots = table[columns // block_size] * block_size + columns % block_size
            key = keys[slots].float().repeat_interleave(heads // kv_heads, dim=1)  # (K, H, D)
            value = values[slots].float().repeat_interleave(heads // kv_heads, dim=1)
            scores = torch.einsum("hd,khd->hk", queries[token].float(), key)
            token_lse = torch.logsumexp(scores, dim=-1)
            output[token] = torch.einsum("hk,khd->hd", (scores - token_lse[:, None]).exp(),
                                         value).to(output.dtype)
            lse[token] = token_lse
