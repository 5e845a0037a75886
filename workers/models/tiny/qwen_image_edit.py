"""The tiny Qwen-Image-Edit and Qwen-Image-Edit-Plus pipelines: one set of components (a
Qwen2.5-VL text encoder with its processor, a Qwen-Image VAE and transformer, the scheduler),
two pipeline classes."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKLQwenImage,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from workers.models.tiny.chat_template import qwen_chat_template
from workers.models.tiny.components import save_pipeline, seeded
from workers.models.tokenizer import build_tiny_tokenizer

# Qwen2.5-VL's prompt format. The edit pipeline formats its own prompt and never
# applies it, but the real processor ships one, so anything chatting with the text
# encoder through the processor behaves as with the real checkpoint.
QWEN2_5_VL_CHAT_TEMPLATE = qwen_chat_template("You are a helpful assistant.")

# Qwen2.5-VL cuts images into 14 px patches and merges 2x2 patches into one token.
# The pipeline shows the text encoder the input image at about 1024x1024 pixels;
# capping it at 112x112 leaves 8x8 patches = 16 vision tokens.
_EDIT_PATCH_SIZE = 14
_EDIT_MIN_PIXELS = 56 * 56
_EDIT_MAX_PIXELS = 112 * 112
# Qwen2.5-VL normalises pixels with the CLIP constants.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# The transformer reads the text encoder's last hidden states: joint_attention_dim
# must equal this (3584 in the real model).
EDIT_TEXT_HIDDEN_SIZE = 64
# T/H/W split of the text rotary frequencies; sums to head_dim // 2 = (64 / 4) // 2
# (the 7B encoder uses 16/24/24 of 128).
EDIT_TEXT_MROPE_SECTION = [2, 3, 3]

# VAE latent channels (16 in the real model). The transformer sees latents packed
# in 2x2 patches, so its in_channels is 4 * z_dim and its out_channels is z_dim.
EDIT_LATENT_CHANNELS = 4
# Per-axis (frame, height, width) rope dims of the transformer; they must sum to its
# attention_head_dim (the real model: 16 + 56 + 56 = 128).
EDIT_AXES_DIMS_ROPE = (4, 6, 6)
# The real VAE downsamples 8x. Whatever output size is asked for, the pipeline
# encodes the *input* image at about 1024x1024 pixels, so 8x would give the tiny
# transformer 4096 image tokens; 16x gives 1024. 16x is also the most that works:
# the pipeline rounds that image to multiples of 32 and packs latents in 2x2.
_VAE_DOWNSAMPLINGS = 4
# Qwen-Image's scheduler_config.json: dynamic shifting between these sequence lengths.
QWEN_IMAGE_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 0.9,
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "invert_sigmas": False,
    "stochastic_sampling": False,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}


def build_tiny_qwen_image_edit(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random ``QwenImageEditPipeline`` with fixed seeds; save it into ``out_dir``."""
    return _build_tiny_qwen_edit(out_dir, seed, QwenImageEditPipeline)


def build_tiny_qwen_image_edit_plus(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random ``QwenImageEditPlusPipeline`` (the class of Qwen-Image-Edit-2509
    and -2511: the same components, a list of images per call); save it into ``out_dir``."""
    return _build_tiny_qwen_edit(out_dir, seed, QwenImageEditPlusPipeline)


def _build_tiny_qwen_edit(out_dir: Path, seed: int, pipeline_class: type[DiffusionPipeline]) -> Path:
    out_dir = Path(out_dir)
    processor = build_edit_processor()
    tokenizer = processor.tokenizer
    pipeline = pipeline_class(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
        vae=seeded(seed, _build_edit_vae),
        text_encoder=seeded(seed, lambda: _build_edit_text_encoder(tokenizer)),
        tokenizer=tokenizer,
        processor=processor,
        transformer=seeded(seed, _build_edit_transformer),
    )
    return save_pipeline(pipeline, out_dir)


def build_edit_processor() -> Qwen2VLProcessor:
    """The tiny tokenizer with Qwen2.5-VL's image and video processors at small image sizes:
    the processor of the edit pipelines' text encoder."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = QWEN2_5_VL_CHAT_TEMPLATE
    vision = {
        "patch_size": _EDIT_PATCH_SIZE,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
    }
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": _EDIT_MIN_PIXELS, "longest_edge": _EDIT_MAX_PIXELS}, **vision
    )
    video_processor = Qwen2VLVideoProcessor(
        size={"shortest_edge": _EDIT_MIN_PIXELS, "longest_edge": _EDIT_MAX_PIXELS * 4}, **vision
    )
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_5_VL_CHAT_TEMPLATE,
    )


def _build_edit_text_encoder(tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": EDIT_TEXT_HIDDEN_SIZE,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1_000_000.0,
            "mrope_section": EDIT_TEXT_MROPE_SECTION,
        },
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        # Vision head_dim = 32 / 2 = 16; the 2D rope needs it divisible by 4.
        "num_heads": 2,
        "patch_size": _EDIT_PATCH_SIZE,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # Windows of 112 px = 4x4 merged tokens, as in the real model; block 1 attends globally.
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "out_hidden_size": EDIT_TEXT_HIDDEN_SIZE,
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def _build_edit_vae() -> AutoencoderKLQwenImage:
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=EDIT_LATENT_CHANNELS,
        dim_mult=[1] * (_VAE_DOWNSAMPLINGS + 1),
        # No residual blocks in the encoder levels (the decoder still has one per level):
        # at 1024x1024 each 3D conv costs about half a second on a CPU.
        num_res_blocks=0,
        # Like the real VAE, the first levels downsample only in space; single images never
        # reach the temporal convs anyway.
        temperal_downsample=[False] * (_VAE_DOWNSAMPLINGS - 2) + [True, True],
        # Identity normalisation: a random VAE has no latent statistics to undo.
        latents_mean=[0.0] * EDIT_LATENT_CHANNELS,
        latents_std=[1.0] * EDIT_LATENT_CHANNELS,
    )


def _build_edit_transformer() -> QwenImageTransformer2DModel:
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * EDIT_LATENT_CHANNELS,
        out_channels=EDIT_LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=sum(EDIT_AXES_DIMS_ROPE),
        num_attention_heads=2,
        joint_attention_dim=EDIT_TEXT_HIDDEN_SIZE,
        guidance_embeds=False,
        axes_dims_rope=EDIT_AXES_DIMS_ROPE,
    )
