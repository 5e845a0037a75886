"""Editor variants the bench measured and the product left out (not faster at real size):
the Qwen-Image rotary embedding in real arithmetic, so that a compiled block could fuse it.
bench/RESULTS.md, "Edits near the GPU's limit", has the figures.
"""

from __future__ import annotations

import torch


def use_real_rotary(transformer: torch.nn.Module) -> bool:
    """Give each Qwen-Image joint-attention layer the real-arithmetic rotary processor."""
    from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

    changed = False
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if type(processor) is QwenDoubleStreamAttnProcessor2_0:
            real = RealRotaryQwenProcessor()
            real._attention_backend = processor._attention_backend
            real._parallel_config = processor._parallel_config
            module.set_processor(real)
            changed = True
    return changed


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``x`` [B, S, H, D] rotated by ``freqs`` [S, D/2] (complex) as pairs of reals.

    The complex form: ``view_as_real(view_as_complex(x.float()) * freqs)``; the same
    float32 products and sums, so the bf16 result is the same up to rounding order.
    """
    if freqs.is_complex():
        freqs = torch.view_as_real(freqs)
    cos, sin = freqs[None, :, None, :, 0], freqs[None, :, None, :, 1]
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    out = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return out.flatten(3).type_as(x)


def _processor_base():
    from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0

    return QwenDoubleStreamAttnProcessor2_0


class RealRotaryQwenProcessor(_processor_base()):
    """diffusers' Qwen-Image joint attention (text and image streams, one attention over
    both), with :func:`rotate` in place of the complex rotary; the rest is its own."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None,
                 encoder_hidden_states_mask=None, attention_mask=None, image_rotary_emb=None):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        if encoder_hidden_states is None or attention_mask is not None:
            # The errors are the parent's own.
            return super().__call__(attn, hidden_states, encoder_hidden_states,
                                    encoder_hidden_states_mask, attention_mask, image_rotary_emb)
        if encoder_hidden_states_mask is not None:
            image_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]
        head_dim = attn.inner_dim // attn.heads
        streams = []
        for x, (q, k, v), (norm_q, norm_k) in (
                (encoder_hidden_states, (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj),
                 (attn.norm_added_q, attn.norm_added_k)),
                (hidden_states, (attn.to_q, attn.to_k, attn.to_v), (attn.norm_q, attn.norm_k))):
            query, key, value = (p(x).unflatten(-1, (-1, head_dim)) for p in (q, k, v))
            if norm_q is not None:
                query = norm_q(query)
            if norm_k is not None:
                key = norm_k(key)
            streams.append([query, key, value])
        if image_rotary_emb is not None:
            img_freqs, txt_freqs = image_rotary_emb
            for stream, freqs in zip(streams, (txt_freqs, img_freqs)):
                stream[0], stream[1] = rotate(stream[0], freqs), rotate(stream[1], freqs)
        # Order: [text, image], as the parent's.
        joint = [torch.cat([t, i], dim=1) for t, i in zip(*streams)]
        out = dispatch_attention_fn(*joint, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                                    backend=self._attention_backend, parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(joint[0].dtype)
        seq_txt = encoder_hidden_states.shape[1]
        img_out = attn.to_out[0](out[:, seq_txt:].contiguous())
        if len(attn.to_out) > 1:
            img_out = attn.to_out[1](img_out)
        return img_out, attn.to_add_out(out[:, :seq_txt].contiguous())
