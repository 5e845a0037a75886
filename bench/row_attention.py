"""The slot decoder's (bench/slot_decoder.py) decode-step attention over each row's own
columns: a small Triton kernel.

Every row holds its own suffix and generated keys/values (~150 columns in a relations run) and
asks one query per head. That part is memory-bound: at batch 1024 the rows' keys/values are
~630 MB a layer. Flash attention's kernel runs a 128-query block for each (row, head), nearly
all of it padding, and took ~2.5x the time the bytes need. Here one program per (row, kv head)
reads the row's used columns once, in blocks of BLOCK_N, for the ``group`` query heads that
share the kv head, with an online softmax; it returns the output and the log-sum-exp, so the
caller merges it with the prefix part.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64


@triton.jit
def _row_attention_kernel(
    queries, keys, values, used_columns, output, lse,
    query_row_stride, query_head_stride,
    key_row_stride, key_column_stride, key_head_stride,
    output_row_stride, output_head_stride, lse_row_stride,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, DIM: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    kv_head = tl.program_id(1)
    used = tl.load(used_columns + row)
    heads = kv_head * GROUP + tl.arange(0, GROUP_PAD)
    head_ok = tl.arange(0, GROUP_PAD) < GROUP
    dims = tl.arange(0, DIM)
    query = tl.load(queries + row * query_row_stride + heads[:, None] * query_head_stride
                    + dims[None, :], mask=head_ok[:, None], other=0.0)  # (GROUP_PAD, DIM)
    maximum = tl.full([GROUP_PAD], float("-inf"), dtype=tl.float32)
    total = tl.zeros([GROUP_PAD], dtype=tl.float32)
    accumulator = tl.zeros([GROUP_PAD, DIM], dtype=tl.float32)
    base = row * key_row_stride + kv_head * key_head_stride
    for start in range(0, used, BLOCK):
        columns = start + tl.arange(0, BLOCK)
        in_use = columns < used
        offsets = base + columns[:, None] * key_column_stride + dims[None, :]
        key = tl.load(keys + offsets, mask=in_use[:, None], other=0.0)  # (BLOCK, DIM)
        scores = tl.dot(query, tl.trans(key))  # (GROUP_PAD, BLOCK), float32
        scores = tl.where(in_use[None, :], scores, float("-inf"))
        new_maximum = tl.maximum(maximum, tl.max(scores, 1))
        weights = tl.exp(scores - new_maximum[:, None])
        rescale = tl.exp(maximum - new_maximum)
        total = total * rescale + tl.sum(weights, 1)
        value = tl.load(values + offsets, mask=in_use[:, None], other=0.0)
        accumulator = accumulator * rescale[:, None] + tl.dot(weights.to(value.dtype), value)
        maximum = new_maximum
    result = accumulator / total[:, None]
    tl.store(output + row * output_row_stride + heads[:, None] * output_head_stride + dims[None, :],
             result.to(output.dtype.element_ty), mask=head_ok[:, None])
    tl.store(lse + row * lse_row_stride + heads, maximum + tl.log(total), mask=head_ok)


def row_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                  used_columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of pre-scaled ``queries`` (B, H, D) over the first ``used_columns[b]`` (>= 1)
    columns of row b's ``keys``/``values`` (B, S, kv_heads, D); (output (B, H, D), log-sum-exp
    (B, H) in float32)."""
    batch, heads, dim = queries.shape
    kv_heads = keys.shape[2]
    group = heads // kv_heads
    queries = queries.contiguous()
    output = torch.empty_like(queries)
    lse = torch.empty(batch, heads, dtype=torch.float32, device=queries.device)
    _row_attention_kernel[(batch, kv_heads)](
        queries, keys, values, used_columns, output, lse,
        queries.stride(0), queries.stride(1),
        keys.stride(0), keys.stride(1), keys.stride(2),
        output.stride(0), output.stride(1), lse.stride(0),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), DIM=dim, BLOCK=BLOCK_N)
    return output, lse
