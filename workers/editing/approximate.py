"""Approximate editor modes: faster edits that are NOT the same images. Off by default.

Each is the user's explicit choice (``EVALFLEET_EDIT_FP8``, ``EVALFLEET_EDIT_STEP_CACHE``),
part of the run's identity and named in its report; ``compare`` refuses to set such a run
against an exact one unless told to.

- FP8 matrix products (torchao): the transformer blocks' linear layers take float8
  weights (per output row) and float8 activations (per token, scaled on the fly) on the
  tensor cores; everything else stays bf16. Trades mantissa bits in every product.
- Step cache (diffusers' First Block Cache): each transformer pass runs its first block;
  when that block's output moved by less than the threshold (relative mean absolute
  change) since the pass that last ran in full, the other blocks are skipped and their
  last residual reused. Trades the skipped passes' updates; the count is reported per edit.

Their quality cost was not measured here (random weights cannot show it).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

FP8_PACKAGE_HINT = "pip install 'evalfleet[fp8]' (torchao)"


class ApproximateModeError(RuntimeError):
    """An approximate mode was asked for where it cannot run."""


def apply_fp8(transformer: torch.nn.Module, device: torch.device) -> int:
    """Float8 weights and dynamic float8 activations in the blocks' linear layers; their count."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        raise ApproximateModeError(
            f"EVALFLEET_EDIT_FP8=true needs a CUDA GPU with float8 tensor cores (compute capability "
            f"8.9 or newer: Ada, Hopper, Blackwell); this worker's device is {device}")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as exc:
        raise ApproximateModeError(f"EVALFLEET_EDIT_FP8=true needs torchao: {FP8_PACKAGE_HINT} "
                                   f"({exc})") from None
    blocks = _blocks(transformer)
    # Float8 products need both sides of each matrix a multiple of 16.
    layers = [m for block in blocks for m in block.modules()
              if isinstance(m, torch.nn.Linear) and m.in_features % 16 == 0 and m.out_features % 16 == 0]
    targets = {id(m) for m in layers}
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    for block in blocks:
        quantize_(block, config, filter_fn=lambda module, _name: id(module) in targets)
    logger.warning("editor: FP8 matrix products in %d linear layers (approximate)", len(layers))
    return len(layers)


def _blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        raise ApproximateModeError(f"{type(transformer).__name__} has no transformer_blocks to "
                                   "apply an approximate mode to")
    return list(blocks)


class StepCache:
    """diffusers' First Block Cache on a transformer, counting the passes it skipped."""

    def __init__(self, transformer: Any, threshold: float) -> None:
        from diffusers.hooks import FirstBlockCacheConfig
        from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

        if not hasattr(transformer, "enable_cache"):
            raise ApproximateModeError(f"{type(transformer).__name__} takes no diffusers cache hooks: "
                                       "EVALFLEET_EDIT_STEP_CACHE must be 0 for this editor")
        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        head = _blocks(transformer)[0]
        self._leader = head._diffusers_hook.get_hook(_FBC_LEADER_BLOCK_HOOK)
        self._transformer = transformer
        self.threshold = threshold
        self.passes = 0
        self.skipped = 0
        # After every pass, inside the pipeline's cache context ("cond"/"uncond"): did the
        # leader block decide to skip the rest?
        self._handle = transformer.register_forward_hook(self._count)
        logger.warning("editor: step cache (First Block Cache, threshold %g, approximate)", threshold)

    def _count(self, module, args, output) -> None:
        self.passes += 1
        if not self._leader.state_manager.get_state().should_compute:
            self.skipped += 1

    def reset(self) -> None:
        """Before each edit: forget the last edit's residuals (the pipeline does not), so an
        edit's skips depend on that edit alone and a rerun reproduces it; zero the counts."""
        self._transformer._reset_stateful_cache()
        self.passes = self.skipped = 0

    def counts(self) -> dict[str, int]:
        """Transformer passes of the edit so far and how many of them the cache skipped."""
        return {"passes": self.passes, "skipped_passes": self.skipped}


def apply_approximate_modes(pipeline: Any, fp8: bool, step_cache: float,
                            device: torch.device) -> list[str]:
    """Apply the modes asked for (none by default); their names, for the log and the report."""
    modes = []
    if fp8:
        apply_fp8(pipeline.transformer, device)
        modes.append("fp8")
    if step_cache > 0:
        pipeline._evalfleet_step_cache = StepCache(pipeline.transformer, step_cache)
        modes.append(f"step-cache {step_cache:g}")
    return modes


def step_cache_of(pipeline: Any) -> StepCache | None:
    return getattr(pipeline, "_evalfleet_step_cache", None)


def remove_step_cache(pipeline: Any) -> None:
    """Take the step cache off (the bench compares modes on one pipeline)."""
    cache = step_cache_of(pipeline)
    if cache is not None:
        cache._handle.remove()
        pipeline.transformer.disable_cache()
        del pipeline._evalfleet_step_cache
