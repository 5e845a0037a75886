"""Qwen3-VL's text layers written out for the relations engine, with a pluggable attention.

The projections, embeddings, rotary tables and MLP/experts are the model's own modules and
weights; what is written out is the elementwise work between them (RMS norms, the rotary
embedding, residual adds, SiLU), as pure functions of tensors. On CUDA they are compiled
(``torch.compile``, dynamic in the batch and length: one compile serves every layer, batch
and length), which fuses ~40 small kernels per layer into a few; at batch 256 those small
kernels alone were ~4 ms of a ~25 ms step. Elsewhere they run as written, which is transformers' arithmetic.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Attention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def rms_norm(hidden: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3's RMSNorm: in float32, scaled by the weight in the input's dtype."""
    dtype = hidden.dtype
    as_float = hidden.float()
    as_float = as_float * torch.rsqrt(as_float.pow(2).mean(-1, keepdim=True) + eps)
    return weight * as_float.to(dtype)


def add_rms_norm(residual: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + delta, its RMS norm): a layer's residual add and the next norm."""
    hidden = residual + delta
    return hidden, rms_norm(hidden, weight, eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def norm_and_rotate(query: torch.Tensor, key: torch.Tensor, query_weight: torch.Tensor,
                    key_weight: torch.Tensor, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                    scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMS norms, the rotary embedding, and the query's attention scale.

    ``query`` (n, L, heads, dim), ``key`` (n, L, kv_heads, dim), ``cos``/``sin`` (n, L, dim).
    """
    cos, sin = cos[:, :, None], sin[:, :, None]
    query = rms_norm(query, query_weight, eps)
    key = rms_norm(key, key_weight, eps)
    query = (query * cos + _rotate_half(query) * sin) * scaling
    key = key * cos + _rotate_half(key) * sin
    return query, key


def silu_gate(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def _compiled(fn: Callable) -> Callable:
    """``fn`` compiled once for every batch and length.

    Only the leading (count, length) dims of its tensors vary; the model's dims (heads,
    head_dim, hidden) stay static. With every dim dynamic, a batch that happens to equal a
    model dim (32 rows and 32 heads) is compiled apart (sizes that are equal share a symbol),
    and the next batch compiles again: seconds of a task's time.
    """
    compiled = torch.compile(fn, fullgraph=True, dynamic=None)

    @functools.wraps(fn)
    def run(*args):
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.dim() >= 3:
                torch._dynamo.maybe_mark_dynamic(arg, 0)
                torch._dynamo.maybe_mark_dynamic(arg, 1)
        return compiled(*args)

    return run


class _Functions:
    def __init__(self, compiled: bool):
        wrap = _compiled if compiled else (lambda fn: fn)
        self.rms_norm = wrap(rms_norm)
        self.add_rms_norm = wrap(add_rms_norm)
        self.norm_and_rotate = wrap(norm_and_rotate)
        self.silu_gate = wrap(silu_gate)


@functools.cache
def _functions(compiled: bool) -> _Functions:
    return _Functions(compiled)


def run_text_layers(model: nn.Module, hidden: torch.Tensor, positions: torch.Tensor,
                    attention: Attention, *, compiled: bool,
                    deepstack: tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor]
                    | None = None) -> torch.Tensor:
    """The text model on input embeddings (n, L, hidden) at mrope positions (3, n, L); the
    final-normed hidden states (n, L, hidden) out.

    ``attention(layer, query, key, value)`` gets the pre-scaled query (n, heads, L, dim) and
    key/value (n, kv_heads, L, dim), and returns (n, L, heads, dim).

    ``deepstack`` (flat token indices (k,), one (k, hidden) tensor per early layer): features
    of the image's visual tokens, added to the hidden states after the first layers as
    Qwen3-VL's own forward does. Or one (n * L, hidden) tensor per early layer, zero but at
    the visual tokens: the same sum at a fixed shape (what a CUDA graph replays).
    """
    fn = _functions(compiled)
    text_model = model.model.language_model
    layers = text_model.layers
    cos, sin = text_model.rotary_emb(hidden, positions)
    count, length = hidden.shape[:2]
    residual = hidden
    normed = fn.rms_norm(hidden, layers[0].input_layernorm.weight, _eps(layers[0].input_layernorm))
    for index, layer in enumerate(layers):
        attn = layer.self_attn
        heads = (count, length, -1, attn.head_dim)
        query, key = fn.norm_and_rotate(
            attn.q_proj(normed).view(heads), attn.k_proj(normed).view(heads),
            attn.q_norm.weight, attn.k_norm.weight, _eps(attn.q_norm), cos, sin, attn.scaling)
        value = attn.v_proj(normed).view(heads)
        output = attention(index, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        post = layer.post_attention_layernorm
        residual, normed = fn.add_rms_norm(residual, attn.o_proj(output.reshape(count, length, -1)),
                                           post.weight, _eps(post))
        following = layers[index + 1].input_layernorm if index + 1 < len(layers) else text_model.norm
        if deepstack is not None and index < _deepstack_layers(deepstack):
            residual = _add_deepstack(residual + _mlp(layer.mlp, normed, fn), deepstack, index)
            normed = fn.rms_norm(residual, following.weight, _eps(following))
            continue
        residual, normed = fn.add_rms_norm(residual, _mlp(layer.mlp, normed, fn), following.weight,
                                           _eps(following))
    return normed


def _deepstack_layers(deepstack) -> int:
    return len(deepstack[1]) if isinstance(deepstack, tuple) else len(deepstack)


def _add_deepstack(residual: torch.Tensor, deepstack, index: int) -> torch.Tensor:
    count, length = residual.shape[:2]
    flat = residual.view(count * length, -1)
    if isinstance(deepstack, tuple):
        tokens, features = deepstack
        flat = flat.index_add(0, tokens, features[index].to(flat.dtype))
    else:
        flat = flat + deepstack[index]
    return flat.view(count, length, -1)


def _mlp(mlp: nn.Module, hidden: torch.Tensor, fn: _Functions) -> torch.Tensor:
    """A dense SwiGLU MLP with the fused gate; anything else (experts) as the model runs it."""
    activation = type(getattr(mlp, "act_fn", None)).__name__
    if activation in ("SiLU", "SiLUActivation") and all(
            hasattr(mlp, name) for name in ("gate_proj", "up_proj", "down_proj")):
        return mlp.down_proj(fn.silu_gate(mlp.gate_proj(hidden), mlp.up_proj(hidden)))
    return mlp(hidden)


def _eps(norm: nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
