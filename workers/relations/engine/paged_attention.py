"""Attention of row tokens over their own keys in the paged cache: a Triton kernel.

A row's own keys (its suffix and what it generated, ~100-600 tokens) live in blocks scattered
over the cache. Gathering them into one run per step and layer, for flash attention's varlen
kernel, moved every row's keys three times and ran a 128-query tile per (row, head) with one
query in it: at batch 512 on an H200 that was 52 ms of a 83 ms step. Here one program per
(query token, kv head) walks its row's block table and reads each key once, for the ``group``
query heads that share the kv head, with an online softmax (key_blocks.py), and merges
the token's part over its image's prefix (prefix_attention.py) into it by log-sum-exp: one
kernel per layer and step gives every token's attention. A prefill chunk's tokens are query
tokens like any other (token ``j`` sees its row's keys ``0..used[j]-1``): they re-read the
chunk's keys, which a chunk of ~100 tokens keeps in L2.

``paged_attention_reference`` is the same in plain torch (the tests' reference).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from workers.relations.engine.key_blocks import Launch, attend_block, finish, read_block

# One cache block per iteration, one warp: the fastest of 36 settings on one real-run step on
# an H100 (bench/bench_attention_kernels.py; 0.374 ms a layer against 0.401 for Triton's
# defaults with 64 keys, ~2.5 TB/s of the rows' keys: bench/RESULTS.md).
LAUNCH = Launch(block_keys=16, warps=1, stages=3)


@triton.jit
def _paged_kernel(
    queries, keys, values, tables, token_row, token_used, prefix_output, prefix_lse,
    prefix_used, output, lse,
    query_token_stride, query_head_stride, key_slot_stride, key_head_stride, table_stride,
    output_token_stride, output_head_stride, lse_token_stride,
    BLOCK_SIZE: tl.constexpr, GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr,
    BLOCK: tl.constexpr, MERGE: tl.constexpr,
):
    token = tl.program_id(0)
    kv_head = tl.program_id(1)
    row = tl.load(token_row + token).to(tl.int64)
    used = tl.load(token_used + token)
    heads = kv_head * GROUP + tl.arange(0, GROUP_PAD)
    head_ok = tl.arange(0, GROUP_PAD) < GROUP
    dims = tl.arange(0, DIM)
    query = tl.load(queries + token * query_token_stride + heads[:, None] * query_head_stride
                    + dims[None, :], mask=head_ok[:, None], other=0.0)  # (GROUP_PAD, DIM)
    maximum = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    total = tl.zeros([GROUP_PAD], dtype=tl.float32)
    accumulator = tl.zeros([GROUP_PAD, DIM], dtype=tl.float32)
    table = tables + row * table_stride
    for start in range(0, used, BLOCK):
        key, value, columns = read_block(keys, values, table, start, used, kv_head,
                                         key_slot_stride, key_head_stride, BLOCK_SIZE, DIM, BLOCK)
        maximum, total, accumulator = attend_block(query, key, value, columns[None, :] < used,
                                                   maximum, total, accumulator)
    # No own keys (a token of an image prefix, a padding token): zeros and -inf.
    result, own_lse = finish(maximum, total, accumulator)
    if MERGE:
        # The same token's part over its image's prefix (prefix_attention.py), if it read one.
        has_prefix = tl.load(prefix_used + token) > 0
        other = tl.load(prefix_output + token * output_token_stride
                        + heads[:, None] * output_head_stride + dims[None, :],
                        mask=head_ok[:, None] & has_prefix, other=0.0).to(tl.float32)
        other_lse = tl.load(prefix_lse + token * lse_token_stride + heads,
                            mask=head_ok & has_prefix, other=float("-inf"))
        both = tl.maximum(own_lse, other_lse)
        both = tl.where(both == float("-inf"), 0.0, both)
        own_weight = tl.exp(own_lse - both)
        other_weight = tl.exp(other_lse - both)
        norm = own_weight + other_weight
        safe_norm = tl.where(norm > 0, norm, 1.0)
        result = (result * own_weight[:, None] + other * other_weight[:, None]) / safe_norm[:, None]
        own_lse = tl.where(norm > 0, both + tl.log(safe_norm), float("-inf"))
    tl.store(output + token * output_token_stride + heads[:, None] * output_head_stride
             + dims[None, :], result.to(output.dtype.element_ty), mask=head_ok[:, None])
    tl.store(lse + token * lse_token_stride + heads, own_lse, mask=head_ok)


def paged_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    tables: torch.Tensor, token_row: torch.Tensor, token_used: torch.Tensor,
                    block_size: int, prefix: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
                    | None = None, launch: Launch = LAUNCH) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-scaled ``queries`` (N, H, D), token ``j`` over keys ``0..token_used[j]-1`` (none
    for 0) of the row whose block table is ``tables[token_row[j]]`` (int32, (R, W)); ``keys``
    and ``values`` are the cache's (slots, kv_heads, D). ``prefix``: (output (N, H, D),
    log-sum-exp (N, H), used (N,)) of the tokens' attention over their images' prefixes,
    merged in where ``used[j] > 0``. (output (N, H, D), log-sum-exp (N, H) in float32); a
    token that saw no key at all gets zeros and -inf."""
    count, heads, dim = queries.shape
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    queries = queries.contiguous()
    output = torch.empty_like(queries)
    lse = torch.empty(count, heads, dtype=torch.float32, device=queries.device)
    prefix_output, prefix_lse, prefix_used = prefix if prefix is not None else (output, lse, token_used)
    if count:
        _paged_kernel[(count, kv_heads)](
            queries, keys, values, tables, token_row, token_used, prefix_output, prefix_lse,
            prefix_used, output, lse,
            queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1), tables.stride(0),
            output.stride(0), output.stride(1), lse.stride(0),
            BLOCK_SIZE=block_size, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
            DIM=dim, BLOCK=launch.block_keys, MERGE=prefix is not None,
            num_warps=launch.warps, num_stages=launch.stages)
    return output, lse


def paged_attention_reference(queries, keys, values, tables, token_row, token_used,
                              block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``paged_attention`` in float32 products, one token at a time."""
    heads, kv_heads = queries.shape[1], keys.shape[1]
    outputs, lses = [], []
    for token in range(queries.shape[0]):
        columns = torch.arange(int(token_used[token]), device=queries.device)
        table = tables[int(token_row[token])].long()
        slots = table[columns // block_size] * block_size + columns % block_size
        key = keys[slots].float().repeat_interleave(heads // kv_heads, dim=1)  # (K, H, D)
        value = values[slots].float().repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("hd,khd->hk", queries[token].float(), key)
        lse = torch.logsumexp(scores, dim=-1)
        outputs.append(torch.einsum("hk,khd->hd", (scores - lse[:, None]).exp(), value))
        lses.append(lse)
    return torch.stack(outputs).to(queries.dtype), torch.stack(lses)
