"""Attention of one step's tokens over the paged cache: a prefix part and a row part, merged.

A row's query attends to its image's prefix (every token of it) and to its own tokens up to
its own position (causal); an image prefix's query only to its own. Each part gives an output
and its log-sum-exp; ``merge`` makes them exactly the softmax over both key sets at once.

Sequences are attended in groups, padded to the group's longest: the step's decoding rows
(one query each) as one group, each prefill chunk as a group of its own.

``ReferenceAttention`` is the plain torch reference (any device, any dtype: the CPU and the
tests): it gathers each sequence's keys from its blocks. ``FlashAttention`` runs on CUDA in
bf16/fp16: rows' own keys read in place from their blocks by a Triton kernel, and flash
attention's varlen kernel for each image's prefix, read once with all of its rows' queries as
one sequence of queries.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from workers.relations.cascade_attention import additive, flash_varlen, merge


@dataclass
class SequenceGroup:
    """Sequences attended together, each padded to Q queries (a padded query repeats the
    sequence's last one) and to the group's longest key sets."""

    tokens: torch.Tensor  # (S, Q) the queries' places among the step's tokens
    valid: torch.Tensor  # (S, Q) bool: the query is no padding
    positions: torch.Tensor  # (S, Q) each query's position in its own sequence
    own_slots: torch.Tensor  # (S, O) cache slots of each sequence's tokens 0..O-1
    own_used: torch.Tensor  # (S,) its tokens in the cache after this step
    prefix_slots: torch.Tensor | None = None  # (S, P) cache slots of a row's image prefix
    prefix_used: torch.Tensor | None = None  # (S,) that prefix's length


@dataclass
class StepAttention:
    """Where the step's new keys and values go (``slots``, one per token), and who reads what."""

    slots: torch.Tensor  # (T,)
    groups: list[SequenceGroup]


class ReferenceAttention:
    """The step's attention in plain products; called per layer by the model's layers with the
    pre-scaled query (1, H, T, D) and key/value (1, kv_heads, T, D); returns (1, T, H, D)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], step: StepAttention):
        self.keys, self.values, self.step = keys, values, step

    def __call__(self, layer: int, query, key, value) -> torch.Tensor:
        keys, values = self.keys[layer], self.values[layer]
        keys[self.step.slots] = key[0].transpose(0, 1)
        values[self.step.slots] = value[0].transpose(0, 1)
        queries = query[0].transpose(0, 1)  # (T, H, D)
        output = torch.empty_like(queries)
        for group in self.step.groups:
            attended = group_attention(queries, keys, values, group)  # (S, Q, H, D)
            output[group.tokens[group.valid]] = attended[group.valid]
        return output[None]


def group_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    group: SequenceGroup) -> torch.Tensor:
    """(S, Q, H, D): each sequence's queries over [its image prefix | its own tokens]."""
    count, width = group.tokens.shape
    heads, dim = queries.shape[1:]
    kv_heads = keys.shape[1]
    grouped = queries[group.tokens].view(count, width, kv_heads, heads // kv_heads, dim)
    grouped = grouped.permute(0, 2, 3, 1, 4)  # (S, kv, g, Q, D)
    columns = torch.arange(group.own_slots.shape[1], device=queries.device)
    own_visible = ((columns[None, None, :] <= group.positions[:, :, None])
                   & (columns[None, None, :] < group.own_used[:, None, None]))  # (S, Q, O)
    parts = [part_attention(grouped, keys, values, group.own_slots, own_visible[:, None, None])]
    if group.prefix_slots is not None:
        columns = torch.arange(group.prefix_slots.shape[1], device=queries.device)
        prefix_visible = columns[None, :] < group.prefix_used[:, None]  # (S, P)
        parts.append(part_attention(grouped, keys, values, group.prefix_slots,
                                    prefix_visible[:, None, None, None]))
    output = merge(*parts) if len(parts) > 1 else parts[0][0]
    return output.permute(0, 3, 1, 2, 4).reshape(count, width, heads, dim)


def part_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                   slots: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (S, kv, g, Q, D), log-sum-exp (S, kv, g, Q) in float32) of pre-scaled queries
    (S, kv, g, Q, D) over the keys at ``slots`` (S, K), where ``visible`` (broadcast to
    (S, kv, g, Q, K)). Softmax in float32, cast back before the product with the values, as
    transformers' eager attention does."""
    part_keys = keys[slots].permute(0, 2, 1, 3)[:, :, None]  # (S, kv, 1, K, D)
    part_values = values[slots].permute(0, 2, 1, 3)[:, :, None]
    scores = torch.matmul(queries, part_keys.transpose(-1, -2)).float()
    scores = scores + additive(visible, torch.float32)
    lse = torch.logsumexp(scores, dim=-1)
    weights = (scores - lse[..., None]).exp().to(values.dtype)
    return torch.matmul(weights, part_values), lse


@dataclass
class FlashStep:
    """What ``FlashAttention`` reads. Row tokens (running rows' next tokens and rows' prefill
    chunks) in image order: their own part from the paged kernel, their image's prefix part
    from flash attention's varlen kernel (each image's prefix keys gathered once, all of its
    rows' tokens one sequence of queries). Image prefix chunks (causal over their own keys)
    from the varlen kernel over their gathered keys."""

    slots: torch.Tensor  # (T,) where each token's key/value goes
    block_size: int
    row_tokens: torch.Tensor  # (N,) the row tokens' places among the step's tokens, by image
    row_tables: torch.Tensor  # (R, W) int32: block tables of the step's rows
    token_row: torch.Tensor  # (N,) int32: each row token's row in ``row_tables``
    token_used: torch.Tensor  # (N,) int32: the keys of its row it sees (its position + 1)
    prefix_query_starts: torch.Tensor  # (I + 1,) int32: image i's tokens in row_tokens
    prefix_slots: torch.Tensor  # each image's prefix keys, one image after another
    prefix_starts: torch.Tensor  # (I + 1,) int32
    most_prefix_queries: int
    most_prefix: int
    chunk_tokens: torch.Tensor  # (M,) the image prefix chunks' tokens among the step's
    chunk_query_starts: torch.Tensor  # (C + 1,) int32
    chunk_slots: torch.Tensor  # each chunk's prefix keys 0..end-1, one after another
    chunk_key_starts: torch.Tensor  # (C + 1,) int32
    most_chunk_queries: int
    most_chunk_keys: int


class FlashAttention:
    """The step's attention on CUDA (bf16/fp16): rows' own parts from the paged kernel
    (workers/relations/engine/paged_attention.py), prefix parts and prefix chunks from flash
    attention's varlen kernel, merged by log-sum-exp."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], step: FlashStep):
        from workers.relations.engine.paged_attention import paged_attention

        self.paged = paged_attention
        self.keys, self.values, self.step = keys, values, step

    def __call__(self, layer: int, query, key, value) -> torch.Tensor:
        step, keys, values = self.step, self.keys[layer], self.values[layer]
        keys[step.slots] = key[0].transpose(0, 1)
        values[step.slots] = value[0].transpose(0, 1)
        queries = query[0].transpose(0, 1)  # (T, H, D)
        output = torch.empty_like(queries)
        if step.row_tokens.numel():
            row_queries = queries[step.row_tokens]
            own = self.paged(row_queries, keys, values, step.row_tables, step.token_row,
                             step.token_used, step.block_size)
            prefix = self._prefix_part(row_queries, keys[step.prefix_slots],
                                       values[step.prefix_slots])
            output[step.row_tokens] = merge_two(*prefix, *own)
        if step.chunk_tokens.numel():
            chunk = flash_varlen(queries[step.chunk_tokens].contiguous(), keys[step.chunk_slots],
                                 values[step.chunk_slots], step.chunk_query_starts,
                                 step.chunk_key_starts, step.most_chunk_queries,
                                 step.most_chunk_keys, None, causal=True)
            output[step.chunk_tokens] = chunk[0]
        return output[None]

    def _prefix_part(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """Row tokens (N, H, D) over their images' prefixes. The ``group`` query heads that
        share a kv head go in as ``group`` queries of that head: flash attention then reads
        each prefix once per kv head, not per query head, and fills its 128-query tiles
        ``group`` times fuller (an image's rows in a step are ~10-100 queries)."""
        step = self.step
        count, heads, dim = queries.shape
        kv_heads = keys.shape[1]
        group = heads // kv_heads
        packed = queries.view(count, kv_heads, group, dim).transpose(1, 2)
        output, lse = flash_varlen(packed.reshape(count * group, kv_heads, dim), keys, values,
                                   step.prefix_query_starts * group, step.prefix_starts,
                                   step.most_prefix_queries * group, step.most_prefix, None)
        output = output.view(count, group, kv_heads, dim).transpose(1, 2).reshape(count, heads, dim)
        lse = lse.reshape(count, group, kv_heads).transpose(1, 2).reshape(count, heads)
        return output, lse


def merge_two_parts(first: torch.Tensor, first_lse: torch.Tensor, second: torch.Tensor,
                    second_lse: torch.Tensor) -> torch.Tensor:
    """Outputs (N, H, D) of attention over two disjoint, non-empty key sets, with their
    log-sum-exps (N, H), combined into attention over their union."""
    lse = torch.logaddexp(first_lse, second_lse)[..., None]
    combined = (first.float() * (first_lse[..., None] - lse).exp()
                + second.float() * (second_lse[..., None] - lse).exp())
    return combined.to(first.dtype)


@functools.cache
def _compiled_merge():
    return torch.compile(merge_two_parts, fullgraph=True, dynamic=None)


def merge_two(first, first_lse, second, second_lse) -> torch.Tensor:
    """``merge_two_parts`` as one fused kernel (~10 small ones eager, per layer), compiled
    once for every token count (only the first dim varies)."""
    for tensor in (first, first_lse, second, second_lse):
        torch._dynamo.maybe_mark_dynamic(tensor, 0)
    return _compiled_merge()(first, first_lse, second, second_lse)
