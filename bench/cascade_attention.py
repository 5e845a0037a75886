"""Attention over [an image's shared prefix | a row's own tokens], computed in two parts.

The slot decoder (bench/slot_decoder.py, the benchmarks' baseline) stores each image's prefix
keys/values once and each row's suffix and generated keys/values apart. A query attends to both; the two parts are
merged exactly: one softmax over all keys, whether as one maximum and one denominator shared
by the parts (the matmul backend) or by their log-sum-exps (the flash backend).

Caches are token-major, as flash attention reads them::

    prefix  (I, P, kv_heads, head_dim) per layer; image slot i has prefix_filled[i] columns
    rows    (B, S, kv_heads, head_dim) per layer; row b reads columns 0 .. columns[b]

Rows of image slot i are rows i*R .. i*R+R-1. Queries arrive pre-scaled, (n, heads, L, dim);
every call returns (n, L, heads, dim).

Backends: ``matmul`` (plain torch products, exact, any device: the CPU and the tests) and
``flash`` (on CUDA in bf16/fp16: torch's flash-attention varlen kernel with per-sequence key
counts for the prefixes, a Triton kernel for the rows' own columns; no score tensors in
memory, and the row part reads only the columns in use).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from workers.relations.decoding import triton_attention_runs
from workers.relations.engine.attention import additive, merge

logger = logging.getLogger(__name__)

# At most this many key ranges per prefix in the decode step (see FlashDecode).
MAX_PREFIX_SPLITS = 8


@dataclass
class CascadeCaches:
    """The static tensors the attention reads and writes (views of one storage).

    Rows are a pool: any row may hold a prompt of any image slot. ``row_slot`` says whose
    prefix each row reads; ``by_slot`` lists the rows sorted by image slot and ``slot_starts``
    where each slot's rows begin in it, so the flash prefix part reads each prefix once, with
    all of its rows as one sequence of queries. The scheduler rewrites the three between steps.
    """

    images: int  # I
    batch: int  # B
    prefix_length: int  # P
    row_length: int  # S
    prefix_keys: list[torch.Tensor]  # per layer (I, P, kv_heads, head_dim)
    prefix_values: list[torch.Tensor]
    row_keys: list[torch.Tensor]  # per layer (B, S, kv_heads, head_dim)
    row_values: list[torch.Tensor]
    prefix_filled: torch.Tensor  # (I,): prefix columns in use per image slot
    columns: torch.Tensor  # (B,): the row column a decode step writes
    row_slot: torch.Tensor  # (B,) long: the image slot each row reads
    by_slot: torch.Tensor  # (B,) long: rows sorted by image slot
    slot_starts: torch.Tensor  # (I + 1,) int32: slot i's rows are by_slot[starts[i]:starts[i+1]]
    # The most rows one slot has, rounded up to a power of two: the flash prefix part launches
    # work for this many queries per slot (a CUDA graph is captured per value).
    most_rows: int = 1

    def assign(self, row_slots: list[int]) -> None:
        """Point each row at an image slot (``row_slots[b]`` for row b)."""
        device = self.row_slot.device
        slots = torch.tensor(row_slots, dtype=torch.long)
        counts = torch.bincount(slots, minlength=self.images)
        self.most_rows = power_of_two(int(counts.max()))
        self.row_slot.copy_(slots.to(device))
        self.by_slot.copy_(torch.sort(slots, stable=True).indices.to(device))
        self.slot_starts.copy_(torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
                               .to(device=device, dtype=torch.int32))


def power_of_two(n: int) -> int:
    """The smallest power of two >= n (n >= 1)."""
    return 1 << (max(n, 1) - 1).bit_length()


def flash_available(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the GPU kernels run here: torch's flash varlen kernel with per-sequence key
    counts, and Triton for the rows' own columns (head_dim a power of two)."""
    if not triton_attention_runs(device, dtype, head_dim):
        return False
    try:
        q = torch.zeros(2, 2, 64, dtype=dtype, device=device)
        k = torch.zeros(4, 1, 64, dtype=dtype, device=device)
        cu = torch.tensor([0, 1, 2], dtype=torch.int32, device=device)
        cu_k = torch.tensor([0, 2, 4], dtype=torch.int32, device=device)
        used = torch.tensor([1, 2], dtype=torch.int32, device=device)
        flash_varlen(q, k, k, cu, cu_k, 1, 2, used, causal=False)
        return True
    except (RuntimeError, TypeError) as exc:
        logger.warning("flash attention unavailable (%s); the decoder uses plain products", exc)
        return False


# --- the decode step -------------------------------------------------------------------------

class MatmulDecode:
    """One new token per row, in plain products: each row's prefix part reads its image slot's
    prefix (gathered per row: memory grows with rows x prefix, so this is the exact reference
    and the fallback where the GPU kernels do not run); the row part reads the first
    ``window`` columns."""

    def __init__(self, caches: CascadeCaches, window: int):
        self.caches, self.window = caches, window
        device, dtype = caches.columns.device, caches.prefix_keys[0].dtype
        prefix_columns = torch.arange(caches.prefix_length, device=device)
        row_columns = torch.arange(window, device=device)
        # (B, 1, 1, P) and (B, 1, 1, W): built once per step, shared by every layer.
        filled = caches.prefix_filled[caches.row_slot]
        self.prefix_mask = additive(prefix_columns[None, :] < filled[:, None], dtype)[:, None, None]
        self.row_mask = additive(row_columns[None, :] <= caches.columns[:, None], dtype)[:, None, None]
        self.row_index = torch.arange(caches.batch, device=device)
        self.write_at = caches.columns.clamp(max=caches.row_length - 1)

    def __call__(self, layer: int, query, key, value) -> torch.Tensor:
        caches = self.caches
        batch, heads, _, dim = query.shape  # (B, H, 1, D)
        kv_heads = key.shape[1]
        group = heads // kv_heads
        caches.row_keys[layer][self.row_index, self.write_at] = key[:, :, 0]
        caches.row_values[layer][self.row_index, self.write_at] = value[:, :, 0]
        row_keys = caches.row_keys[layer][:, : self.window].transpose(1, 2)  # (B, kv, W, D)
        row_values = caches.row_values[layer][:, : self.window].transpose(1, 2)
        prefix_keys = caches.prefix_keys[layer][caches.row_slot].transpose(1, 2)  # (B, kv, P, D)
        prefix_values = caches.prefix_values[layer][caches.row_slot].transpose(1, 2)

        queries = query.view(batch, kv_heads, group, dim)
        prefix_scores = torch.matmul(queries, prefix_keys.transpose(-1, -2)) + self.prefix_mask
        row_scores = torch.matmul(queries, row_keys.transpose(-1, -2)) + self.row_mask
        prefix_weights, row_weights = joint_weights(prefix_scores, row_scores)
        output = torch.matmul(prefix_weights, prefix_values) + torch.matmul(row_weights, row_values)
        return output.view(batch, heads, dim)[:, None]


class FlashDecode:
    """The decode step on GPU kernels, merged by log-sum-exp.

    Prefix part (flash attention): the queries are gathered in image-slot order, so each slot's
    rows (all their query heads) are one sequence of queries over the slot's prefix and a
    prefix is read once per image. At small batches that is too few blocks of work to fill the
    GPU, so the prefix can be cut into ``splits`` key ranges, each a sequence of its own
    (flash-decoding's split-KV).

    Row part (``bench.row_attention``, a Triton kernel): each row's used columns, read once
    per kv head for the query heads that share it.
    """

    def __init__(self, caches: CascadeCaches, splits: int = 1):
        self.caches, self.splits = caches, splits
        device, i32 = caches.columns.device, torch.int32
        images, batch = caches.images, caches.batch
        self.write_at = caches.columns.clamp(max=caches.row_length - 1)
        self.row_used = (self.write_at + 1).to(i32)
        self.row_index = torch.arange(batch, device=device)
        self.unsort = torch.argsort(caches.by_slot)  # sorted position of each row
        # Prefix sequences ordered (split, image slot); split j of slot i covers its filled
        # columns [j*chunk, (j+1)*chunk). Computed from device tensors, so a graph replays it.
        filled = caches.prefix_filled.to(i32)[None, :]  # (1, I)
        chunk = (filled + splits - 1) // splits
        part = torch.arange(splits, device=device, dtype=i32)[:, None]  # (c, 1)
        slot = torch.arange(images, device=device, dtype=i32)[None, :]
        starts = (slot * caches.prefix_length + part * chunk).reshape(-1)
        self.prefix_starts = torch.cat([starts, starts[-1:] + caches.prefix_length])
        self.prefix_used = (filled - part * chunk).clamp(min=0).minimum(chunk).reshape(-1)
        # At least 2: flash treats a call of single-query sequences as its own special case.
        self.most_queries = min(max(2, caches.most_rows), batch)
        queries = part * batch + caches.slot_starts[None, :-1]  # (c, I)
        # (No host tensors here: this runs while a CUDA graph is captured.)
        self.prefix_queries = torch.cat([queries.reshape(-1).to(i32),
                                         torch.full((1,), splits * batch, device=device, dtype=i32)])
        self.prefix_most_keys = -(-caches.prefix_length // splits)

    def __call__(self, layer: int, query, key, value) -> torch.Tensor:
        from bench.row_attention import row_attention  # Triton: imported where a GPU runs it

        caches = self.caches
        caches.row_keys[layer][self.row_index, self.write_at] = key[:, :, 0]
        caches.row_values[layer][self.row_index, self.write_at] = value[:, :, 0]
        kv_heads, dim = key.shape[1], key.shape[3]
        queries = query[:, :, 0]  # (B, H, D)
        sorted_queries = queries[caches.by_slot]
        if self.splits > 1:
            sorted_queries = sorted_queries.repeat(self.splits, 1, 1)
        prefix = flash_varlen(sorted_queries, caches.prefix_keys[layer].view(-1, kv_heads, dim),
                        caches.prefix_values[layer].view(-1, kv_heads, dim), self.prefix_queries,
                        self.prefix_starts, self.most_queries, self.prefix_most_keys,
                        self.prefix_used)
        own = row_attention(queries, caches.row_keys[layer], caches.row_values[layer], self.row_used)
        batch, heads = queries.shape[:2]
        prefix_output = prefix[0].view(self.splits, batch, heads, dim)
        prefix_lse = prefix[1].view(self.splits, batch, heads)
        return _decode_merge(prefix_output, prefix_lse, *own, self.unsort)[:, None]


def decode_merge(prefix_output, prefix_lse, own_output, own_lse, unsort: torch.Tensor) -> torch.Tensor:
    """FlashDecode's parts into (B, H, D): the prefix parts (splits, B, H, D) come in image-slot
    order and go back to row order (``unsort``); the row part is (B, H, D)."""
    lses = torch.cat([prefix_lse[:, unsort], own_lse[None]])  # (splits + 1, B, H)
    # Flash gives an empty key range (a split past a short prefix) a log-sum-exp of +inf.
    lses = lses.masked_fill(lses == float("inf"), float("-inf"))
    weights = torch.softmax(lses, dim=0)[..., None]
    combined = ((prefix_output[:, unsort].float() * weights[:-1]).sum(dim=0)
                + own_output.float() * weights[-1])
    return combined.to(own_output.dtype)


@functools.cache
def _compiled_decode_merge():
    return torch.compile(decode_merge, fullgraph=True, dynamic=None)


def _decode_merge(prefix_output, prefix_lse, own_output, own_lse, unsort) -> torch.Tensor:
    """decode_merge as one fused kernel instead of ~10 small ones per layer (FlashDecode only
    runs on CUDA), compiled once for every batch and split count.

    Only the batch and the splits vary. The splits dim is marked unbacked, so one split is
    not compiled apart (dims of size 1 are otherwise specialized); the model's dims stay
    static (all-dynamic shapes tie a batch equal to the head count into a graph of its own).
    """
    for tensor in (prefix_output, prefix_lse):
        _mark_unbacked(tensor, 0)
        torch._dynamo.maybe_mark_dynamic(tensor, 1)
    for tensor in (own_output, own_lse, unsort):
        torch._dynamo.maybe_mark_dynamic(tensor, 0)
    return _compiled_decode_merge()(prefix_output, prefix_lse, own_output, own_lse, unsort)


def _mark_unbacked(tensor: torch.Tensor, dim: int) -> None:
    mark = getattr(torch._dynamo, "mark_unbacked", None)
    if mark is None:  # torch releases that keep it in decorators only
        from torch._dynamo.decorators import mark_unbacked as mark
    mark(tensor, dim)


def prefix_splits(caches: CascadeCaches, heads: int, processors: int) -> int:
    """Key ranges to cut each prefix into so the prefix part has ~2 blocks of work per
    streaming multiprocessor (flash runs a block per 128 queries, sequence and head; the rows
    fill at least batch / most_rows image slots)."""
    most = min(caches.most_rows, caches.batch)
    blocks = -(-caches.batch // most) * -(-most // 128) * heads
    return max(1, min(MAX_PREFIX_SPLITS, 2 * processors // blocks))


# --- prefill of rows that start ------------------------------------------------------------

class MatmulPrefill:
    """Suffix tokens of the rows that start now: [their image's prefix | their own suffix].

    ``groups`` maps an image slot to the positions (in this prefill) of its rows; the prefix
    part runs once per image slot with all of its new rows' tokens as queries.
    """

    def __init__(self, caches: CascadeCaches, rows: torch.Tensor, groups: dict[int, torch.Tensor],
                 width: int):
        self.caches, self.rows, self.groups = caches, rows, groups
        device, dtype = rows.device, caches.prefix_keys[0].dtype
        self.causal = additive(torch.ones(width, width, dtype=torch.bool, device=device).tril(),
                               dtype)
        columns = torch.arange(caches.prefix_length, device=device)
        self.prefix_masks = {slot: additive(columns < caches.prefix_filled[slot], dtype)
                             for slot in groups}

    def __call__(self, layer: int, query, key, value) -> torch.Tensor:
        caches = self.caches
        count, heads, width, dim = query.shape  # (n, H, L, D)
        kv_heads = key.shape[1]
        group = heads // kv_heads
        write_rows(caches, layer, self.rows, key, value)
        output = torch.empty(count, width, heads, dim, dtype=query.dtype, device=query.device)
        for slot, members in self.groups.items():
            prefix_keys = caches.prefix_keys[layer][slot].transpose(0, 1)  # (kv, P, D)
            prefix_values = caches.prefix_values[layer][slot].transpose(0, 1)
            q = query[members].view(-1, kv_heads, group, width, dim)  # (m, kv, g, L, D)
            m = q.shape[0]
            as_queries = q.transpose(0, 1).reshape(kv_heads, m * group * width, dim)
            prefix_scores = (torch.matmul(as_queries, prefix_keys.transpose(-1, -2))
                             + self.prefix_masks[slot])
            prefix_scores = prefix_scores.view(kv_heads, m, group, width, -1).transpose(0, 1)
            own_keys, own_values = key[members][:, :, None], value[members][:, :, None]
            own_scores = torch.matmul(q, own_keys.transpose(-1, -2)) + self.causal  # (m,kv,g,L,L)
            prefix_weights, own_weights = joint_weights(prefix_scores, own_scores)
            from_prefix = torch.matmul(
                prefix_weights.transpose(0, 1).reshape(kv_heads, m * group * width, -1),
                prefix_values).view(kv_heads, m, group, width, dim).transpose(0, 1)
            out = from_prefix + torch.matmul(own_weights, own_values)  # (m, kv, g, L, D)
            output[members] = out.reshape(m, heads, width, dim).transpose(1, 2)
        return output


class FlashPrefill:
    """The prefill on flash attention. The new rows come sorted by image slot, so each slot's
    rows' tokens are one sequence of queries over its prefix; each row's own suffix is a
    causal sequence of its own."""

    def __init__(self, caches: CascadeCaches, rows: torch.Tensor, groups: dict[int, torch.Tensor],
                 width: int):
        self.caches, self.rows, self.width = caches, rows, width
        device, i32 = rows.device, torch.int32
        slots = list(groups)
        counts = [len(groups[slot]) for slot in slots]
        tokens = torch.tensor([0] + counts, device=device, dtype=i32).cumsum(0) * width
        self.per_slot_queries, self.most_queries = tokens.to(i32), max(counts) * width
        prefix = caches.prefix_length
        starts = [slot * prefix for slot in slots] + [(slots[-1] + 1) * prefix]
        self.prefix_starts = torch.tensor(starts, device=device, dtype=i32)
        self.prefix_used = caches.prefix_filled[torch.tensor(slots, device=device)].to(i32)
        self.per_row = torch.arange(len(rows) + 1, device=device, dtype=i32) * width

    def __call__(self, layer: int, query, key, value) -> torch.Tensor:
        caches = self.caches
        count, heads, width, dim = query.shape
        kv_heads = key.shape[1]
        write_rows(caches, layer, self.rows, key, value)
        queries = query.transpose(1, 2).reshape(count * width, heads, dim)
        own_keys = key.transpose(1, 2).reshape(count * width, kv_heads, dim)
        own_values = value.transpose(1, 2).reshape(count * width, kv_heads, dim)
        prefix = flash_varlen(queries, caches.prefix_keys[layer].view(-1, kv_heads, dim),
                        caches.prefix_values[layer].view(-1, kv_heads, dim),
                        self.per_slot_queries, self.prefix_starts, self.most_queries,
                        caches.prefix_length, self.prefix_used)
        own = flash_varlen(queries, own_keys, own_values, self.per_row, self.per_row, width, width,
                     None, causal=True)
        return merge(prefix, own).view(count, width, heads, dim)


# --- shared pieces ---------------------------------------------------------------------------

def write_rows(caches: CascadeCaches, layer: int, rows: torch.Tensor, key, value) -> None:
    """Suffix keys/values (n, kv, L, D) into the first L columns of ``rows``."""
    width = key.shape[2]
    caches.row_keys[layer][rows, :width] = key.transpose(1, 2)
    caches.row_values[layer][rows, :width] = value.transpose(1, 2)


def joint_weights(*scores: torch.Tensor) -> list[torch.Tensor]:
    """Softmax weights over the concatenation of several score parts (same leading dims).

    One maximum and one denominator for all parts, so the parts' products with their values
    add up to exactly attention over all keys at once. Normalised in float32 and cast back,
    as transformers' eager attention does before its product with the values.
    """
    maximum = torch.stack([part.amax(dim=-1) for part in scores]).amax(dim=0)[..., None]
    weights = [(part.float() - maximum.float()).exp() for part in scores]
    total = sum(w.sum(dim=-1, keepdim=True) for w in weights)
    return [(w / total).to(part.dtype) for w, part in zip(weights, scores)]


def flash_varlen(queries, keys, values, query_starts, key_starts, most_queries: int, most_keys: int,
           keys_used, causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (total_q, H, D), log-sum-exp (total_q, H)) of varlen flash attention; queries
    are pre-scaled. ``keys_used`` (per sequence) limits the keys read from each start."""
    output, lse, *_ = torch.ops.aten._flash_attention_forward(
        queries, keys, values, query_starts, key_starts, most_queries, most_keys, 0.0, causal,
        False, scale=1.0, seqused_k=keys_used)
    return output, lse.transpose(0, 1)  # varlen flash gives (H, total_q)

