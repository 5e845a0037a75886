"""Tiny random LoRAs for the tiny edit pipelines."""

from __future__ import annotations

import logging
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)

# The attention projections of both transformer families: what LoRAs for editors adapt.
LORA_TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]


def build_tiny_lora(editor_dir: Path, out_dir: Path, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA for the transformer of the edit pipeline saved in ``editor_dir``, saved
    into ``out_dir`` with the pipeline class's ``save_lora_weights`` (the file a trainer
    writes: ``pytorch_lora_weights.safetensors``). Both LoRA matrices are random, so it
    changes the edits."""
    from peft import LoraConfig, get_peft_model_state_dict

    editor_dir, out_dir = Path(editor_dir), Path(out_dir)
    pipeline_class = getattr(diffusers, DiffusionPipeline.load_config(editor_dir)["_class_name"])
    transformer_class = getattr(diffusers, _component_class(editor_dir, "transformer"))
    transformer = transformer_class.from_pretrained(editor_dir, subfolder="transformer")
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=LORA_TARGET_MODULES,
                        init_lora_weights=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline_class.save_lora_weights(out_dir, transformer_lora_layers=get_peft_model_state_dict(transformer))
    logger.info("built a tiny random LoRA (rank %d) for %s in %s", rank, editor_dir, out_dir)
    return out_dir


def _component_class(pipeline_dir: Path, component: str) -> str:
    # model_index.json maps each component to [library, class name].
    return DiffusionPipeline.load_config(pipeline_dir)[component][1]
