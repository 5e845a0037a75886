"""Model building and loading for the workers.

``load_vlm`` loads Qwen3-VL (hub id or local directory); ``resolve_model_path``
turns the setting ``tiny`` into a tiny random checkpoint built once on disk by
``build_tiny_qwen3_vl`` (``tiny/`` holds one builder per model family), whose tokenizer comes
from ``build_tiny_tokenizer``; ``vlm`` makes the run's Qwen3-VL resident in the worker.
"""

from workers.models.loading import (
    ModelNotFoundError,
    load_vlm,
    pick_device,
    pick_dtype,
    resolve_model_path,
)
from workers.models.tiny import build_tiny_qwen3_vl, build_tiny_qwen3_vl_moe
from workers.models.tokenizer import build_tiny_tokenizer

__all__ = [
    "ModelNotFoundError",
    "build_tiny_qwen3_vl",
    "build_tiny_qwen3_vl_moe",
    "build_tiny_tokenizer",
    "load_vlm",
    "pick_device",
    "pick_dtype",
    "resolve_model_path",
]
