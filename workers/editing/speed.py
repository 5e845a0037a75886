"""Exact speed-ups of the editor's transformer: the same images up to bf16 rounding.

An all-ones text mask is not passed on: with a mask, SDPA cannot take its fused cuDNN
kernel and runs the masked path (a real-size forward 12% slower, masking nothing).
diffusers 0.42's Qwen-Image-Edit pipelines already drop such a mask themselves; the
hook keeps any pipeline (another family or version) from passing one.

What else was measured and left out, because it was not faster at real size (the
attention kernels, the rotary embedding in real arithmetic, cond and uncond batched):
bench/RESULTS.md, "Edits near the GPU's limit".
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)


def speed_up_editor(pipeline: Any) -> list[str]:
    """Apply the exact speed-ups to the pipeline's transformer; the names of those applied."""
    applied = [drop_all_ones_text_mask(pipeline.transformer)]
    logger.info("editor: exact speed-ups: %s", ", ".join(applied))
    return applied


def drop_all_ones_text_mask(transformer: torch.nn.Module) -> str:
    """Pass no text mask where it masks nothing (a mask with a zero is passed unchanged)."""
    def hook(module, args, kwargs):
        mask = kwargs.get("encoder_hidden_states_mask")
        if mask is not None and bool(mask.all()):
            kwargs = {**kwargs, "encoder_hidden_states_mask": None}
        return args, kwargs

    if getattr(transformer, "_evalfleet_mask_hook", None) is None:
        transformer._evalfleet_mask_hook = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return "no all-ones text mask"
