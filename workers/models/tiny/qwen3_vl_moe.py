"""The tiny Qwen3-VL-MoE (the architecture of Qwen3-VL-30B-A3B)."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

from workers.models.tiny.components import seeded
from workers.models.tiny.qwen3_vl import build_config, build_generation_config, build_processor

logger = logging.getLogger(__name__)


def build_tiny_qwen3_vl_moe(out_dir: Path, seed: int = 0) -> Path:
    """The tiny Qwen3-VL's Mixture-of-Experts sibling (the architecture of Qwen3-VL-30B-A3B):
    the same processor and vision tower, text layers with 4 experts, 2 chosen per token."""
    out_dir = Path(out_dir)
    processor = build_processor()
    dense = build_config(processor.tokenizer)
    text = dense.text_config.to_dict()
    text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                decoder_sparse_step=1, mlp_only_layers=[])
    config = Qwen3VLMoeConfig(
        text_config=text, vision_config=dense.vision_config.to_dict(),
        image_token_id=dense.image_token_id, video_token_id=dense.video_token_id,
        vision_start_token_id=dense.vision_start_token_id,
        vision_end_token_id=dense.vision_end_token_id, tie_word_embeddings=False)
    model = seeded(seed, lambda: Qwen3VLMoeForConditionalGeneration(config)).eval()
    model.generation_config = build_generation_config(processor.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    logger.info("built tiny Qwen3-VL-MoE (%d parameters) in %s", model.num_parameters(), out_dir)
    return out_dir
