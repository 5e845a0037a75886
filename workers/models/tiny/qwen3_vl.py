"""The tiny Qwen3-VL (the architecture of Qwen3-VL-8B-Instruct): its processor, config,
random model and generation config."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from workers.models.tiny.chat_template import qwen_chat_template
from workers.models.tokenizer import build_tiny_tokenizer

logger = logging.getLogger(__name__)

QWEN3_VL_CHAT_TEMPLATE = qwen_chat_template()

# Qwen3-VL cuts images into 16 px patches and merges 2x2 patches into one token,
# so sides are multiples of 32. Capping an image at 192x192 pixels keeps a
# 256x256 input at 12x12 patches = 36 vision tokens.
_PATCH_SIZE = 16
_MERGE_SIZE = 2
_TEMPORAL_PATCH_SIZE = 2
_MIN_PIXELS = 64 * 64
_MAX_PIXELS = 192 * 192
# Qwen3-VL normalises pixels with mean = std = 0.5, not the CLIP constants.
_IMAGE_MEAN = [0.5, 0.5, 0.5]
_IMAGE_STD = [0.5, 0.5, 0.5]

TEXT_HIDDEN_SIZE = 64
TEXT_HEAD_DIM = 16
# T/H/W split of the rotary frequencies; must sum to head_dim // 2 (the 8B uses 24/20/20 of 64).
TEXT_MROPE_SECTION = [4, 2, 2]


def build_tiny_qwen3_vl(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny processor and random model with fixed seeds; save both into ``out_dir``."""
    out_dir = Path(out_dir)
    processor = build_processor()
    tokenizer = processor.tokenizer
    model = _build_model(tokenizer, seed)
    model.generation_config = build_generation_config(tokenizer)

    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    logger.info("built tiny Qwen3-VL (%d parameters) in %s", model.num_parameters(), out_dir)
    return out_dir


def build_processor() -> Qwen3VLProcessor:
    """The tiny tokenizer with Qwen3-VL's image and video processors at small image sizes."""
    tokenizer = build_tiny_tokenizer()
    # Also on the tokenizer, so text-only callers can render prompts without the processor.
    tokenizer.chat_template = QWEN3_VL_CHAT_TEMPLATE
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": _MIN_PIXELS, "longest_edge": _MAX_PIXELS},
        patch_size=_PATCH_SIZE,
        temporal_patch_size=_TEMPORAL_PATCH_SIZE,
        merge_size=_MERGE_SIZE,
        image_mean=_IMAGE_MEAN,
        image_std=_IMAGE_STD,
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": _MIN_PIXELS, "longest_edge": _MAX_PIXELS * 4},
        patch_size=_PATCH_SIZE,
        temporal_patch_size=_TEMPORAL_PATCH_SIZE,
        merge_size=_MERGE_SIZE,
        image_mean=_IMAGE_MEAN,
        image_std=_IMAGE_STD,
        # Unset, every video call logs a deprecation warning; True is the future default.
        cap_pixels_per_frame=True,
        max_video_tokens=64,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )


def build_config(tokenizer) -> Qwen3VLConfig:
    """Qwen3-VL's architecture at toy sizes, its special token ids taken from ``tokenizer``."""
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": TEXT_HIDDEN_SIZE,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": TEXT_HEAD_DIM,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": TEXT_MROPE_SECTION,
            "mrope_interleaved": True,
        },
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        # Vision head_dim = 32 / 2 = 16; the 2D axial rope needs it divisible by 4.
        "num_heads": 2,
        "patch_size": _PATCH_SIZE,
        "spatial_merge_size": _MERGE_SIZE,
        "temporal_patch_size": _TEMPORAL_PATCH_SIZE,
        "out_hidden_size": TEXT_HIDDEN_SIZE,
        # A learned 8x8 position grid, bilinearly resampled to each image's grid.
        "num_position_embeddings": 64,
        # Features of these vision blocks are added to the first text layers, one each,
        # so there can be at most as many as text layers.
        "deepstack_visual_indexes": [0, 1],
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def _build_model(tokenizer, seed: int) -> Qwen3VLForConditionalGeneration:
    config = build_config(tokenizer)
    # Weight init draws from torch's global RNG; fork it so callers' RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    return model.eval()


def build_generation_config(tokenizer) -> GenerationConfig:
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # Same ids and sampling defaults as Qwen3-VL-8B-Instruct's generation_config.json.
    return GenerationConfig(
        bos_token_id=end_of_text,
        pad_token_id=end_of_text,
        eos_token_id=[im_end, end_of_text],
        do_sample=True,
        top_k=20,
        top_p=0.8,
        temperature=0.7,
        repetition_penalty=1.0,
    )
