"""Compile the editor's transformer once per host: regional compilation, a shared inductor cache.

The Qwen-Image transformer is 60 copies of one block. ``compile_repeated_blocks``
(diffusers) compiles that block once and every copy reuses the code, so the compile
costs one block, not sixty. Inductor writes what it compiled (FX graphs, Triton
kernels) under ``TORCHINDUCTOR_CACHE_DIR``; pointing every worker process of a host at
one directory (``EVALFLEET_INDUCTOR_CACHE_DIR``) means only the first process of the
host, or of the first run, pays the full compile: later ones load the kernels.

Compilation is lazy: nothing happens here but marking the blocks; the first edit
compiles (the worker log shows a slow first edit), the next ones run the compiled code.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from config.settings import Settings

logger = logging.getLogger(__name__)

INDUCTOR_CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def should_compile(setting: str, device: torch.device) -> bool:
    """``auto``: on a CUDA device only (a CPU compile costs more than the tiny edits it speeds up)."""
    if setting == "auto":
        return device.type == "cuda"
    return setting == "on"


def use_inductor_cache(directory: Path) -> Path:
    """Make inductor read and write its cache in ``directory`` (created, world-readable)."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    # Inductor reads the variable each time it looks for its cache, so setting it before the
    # first compile of this process is enough.
    os.environ[INDUCTOR_CACHE_VARIABLE] = str(directory)
    return directory


def compile_editor_transformer(pipeline, settings: Settings, device: torch.device) -> bool:
    """Mark the pipeline's transformer blocks for compilation if the settings ask for it.

    Returns whether it did. The transformer object stays the same, so the residency
    pool can still move its weights between host and device.
    """
    if not should_compile(settings.editor_compile, device):
        return False
    transformer = pipeline.transformer
    if not getattr(transformer, "_repeated_blocks", None):
        logger.warning("editor: %s names no repeated blocks to compile; it stays eager",
                       type(transformer).__name__)
        return False
    cache = use_inductor_cache(settings.inductor_cache)
    # dynamic=None: the first shape compiles static, a second one (another aspect ratio or
    # instruction length) recompiles once with dynamic sizes instead of once per shape.
    transformer.compile_repeated_blocks(dynamic=None)
    logger.info("editor: %s blocks marked for compilation (inductor cache %s)",
                ", ".join(transformer._repeated_blocks), cache)
    return True


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far (dynamo and inductor, every graph):
    the difference around an edit is the part of it that was compiling, not editing."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", ())))
