"""Attention of one step's tokens over the paged cache: a prefix part and a row part, merged.

A row's query attends to its image's prefix (every token of it) and to its own tokens up to
its own position (causal); an image prefix's query only to its own. Each part gives an output
and its log-sum-exp; ``merge`` makes them exactly the softmax over both key sets at once.

Sequences are attended in groups, padded to the group's longest: the step's decoding rows
(one query each) as one group, each prefill chunk as a group of its own.

``ReferenceAttention`` is the plain torch reference (any device, any dtype: the CPU and the
tests): it gathers each sequence's keys from its blocks. ``PagedAttention`` runs on CUDA in
bf16/fp16: two Triton kernels read the keys in place from their blocks, an image's prefix once
per tile of its tokens, each row's own keys once per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


def additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``visible``, the dtype's minimum elsewhere (a mask added to scores)."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(
        ~visible, torch.finfo(dtype).min)


def merge(*parts: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Outputs of attention over disjoint key sets, combined into attention over their union."""
    lses = torch.stack([lse for _, lse in parts])  # (parts, total_q, H)
    # Flash gives an empty key range (a split past a short prefix) a log-sum-exp of +inf.
    lses = lses.masked_fill(lses == float("inf"), float("-inf"))
    weights = (lses - lses.amax(dim=0, keepdim=True)).exp()
    weights = (weights / weights.sum(dim=0, keepdim=True))[..., None]
    combined = sum(output.float() * weight for (output, _), weight in zip(parts, weights))
    return combined.to(parts[0][0].dtype)


class PagedAttention:
    """The step's attention on CUDA (bf16/fp16) with the Triton kernels, over a step's fields
    on the device (workers/relations/engine/step_inputs.py): each token's part over its
    image's prefix (prefix_attention.py, read once per tile of an image's tokens), then its
    part over its own row's keys, merged into it (paged_attention.py). Launch shapes depend
    only on the step's bucket: a CUDA graph of the step replays them."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor],
                 fields: dict[str, torch.Tensor], tiles: int, block_size: int) -> None:
        # Imported here: Triton is needed on CUDA only.
        from workers.relations.engine.paged_attention import paged_attention
        from workers.relations.engine.prefix_attention import prefix_attention

        self.paged, self.prefix = paged_attention, prefix_attention
        self.keys, self.values, self.block_size = keys, values, block_size
        self.fields = fields
        self.slots = fields["slots"].long()
        self.tiles = tiles

    def __call__(self, layer: int, query, key, value) -> torch.Tensor:
        fields, keys, values = self.fields, self.keys[layer], self.values[layer]
        keys[self.slots] = key[0].transpose(0, 1)
        values[self.slots] = value[0].transpose(0, 1)
        queries = query[0].transpose(0, 1)  # (T, H, D)
        count, heads, dim = queries.shape
        prefix_output = torch.empty(count, heads, dim, dtype=queries.dtype, device=queries.device)
        prefix_lse = torch.empty(count, heads, dtype=torch.float32, device=queries.device)
        self.prefix(queries, keys, values, fields["prefix_tables"], fields["order"],
                    fields["prefix_used"], fields["tile_image"][:self.tiles],
                    fields["tile_start"][:self.tiles], fields["tile_end"][:self.tiles],
                    fields["tile_count"], self.block_size, prefix_output, prefix_lse)
        output, _ = self.paged(queries, keys, values, fields["row_tables"],
                               fields["token_row"], fields["own_used"], self.block_size,
                               prefix=(prefix_output, prefix_lse, fields["prefix_used"]))
        return output[None]
