"""What the tiny builders share: components built from their own seeded RNG, pipelines saved
with their size logged."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, TypeVar

import torch
from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)


def save_pipeline(pipeline: DiffusionPipeline, out_dir: Path) -> Path:
    """Save ``pipeline`` into ``out_dir`` (diffusers' layout) and log its size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out_dir)
    n_params = sum(p.numel() for module in pipeline.components.values()
                   if isinstance(module, torch.nn.Module) for p in module.parameters())
    logger.info("built a tiny %s (%d parameters) in %s", type(pipeline).__name__, n_params, out_dir)
    return out_dir


_Module = TypeVar("_Module", bound=torch.nn.Module)


def seeded(seed: int, build: Callable[[], _Module]) -> _Module:
    """Build one component from its own seeded RNG, so its weights do not depend on the others."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()
