"""Build tiny random-weight checkpoints on disk: Qwen3-VL and the edit pipelines
(Qwen-Image-Edit, Qwen-Image-Edit-Plus, FLUX.1 Kontext).

Each checkpoint has the real layout (config.json, safetensors, tokenizer and
processor files; for an editor, diffusers' model_index.json and one folder per
component), so it is loaded by the same ``from_pretrained`` code as
``Qwen/Qwen3-VL-8B-Instruct`` or ``Qwen/Qwen-Image-Edit``. Their outputs are
gibberish; they exist so the fleet, its tests and the one-command mode run end
to end on a CPU with no download.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, TypeVar

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)
from tokenizers import pre_tokenizers

from workers.models.tokenizer import CORPUS, build_tiny_tokenizer

logger = logging.getLogger(__name__)


def _qwen_chat_template(default_system: str = "") -> str:
    r"""Qwen-VL's prompt format: ``<|im_start|>role\n...<|im_end|>`` turns, images and videos
    as vision placeholders. The real templates also handle tools and reasoning; the fleet
    only sends system/user/assistant turns with images, videos and text. Qwen2.5-VL adds
    a default system turn when the conversation has none."""
    system = (
        "{%- if loop.first and message['role'] != 'system' -%}"
        "{{- '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' -}}"
        "{%- endif -%}"
    ) if default_system else ""
    return (
        "{%- set image_count = namespace(value=0) -%}"
        "{%- set video_count = namespace(value=0) -%}"
        "{%- for message in messages -%}"
        + system +
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
        "{%- if message['content'] is string -%}"
        "{{- message['content'] -}}"
        "{%- else -%}"
        "{%- for item in message['content'] -%}"
        "{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}"
        "{%- set image_count.value = image_count.value + 1 -%}"
        "{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}"
        "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
        "{%- elif item['type'] == 'video' or 'video' in item -%}"
        "{%- set video_count.value = video_count.value + 1 -%}"
        "{%- if add_vision_id -%}{{- 'Video ' ~ video_count.value ~ ': ' -}}{%- endif -%}"
        "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
        "{%- elif 'text' in item -%}"
        "{{- item['text'] -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- endif -%}"
        "{{- '<|im_end|>\\n' -}}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
    )


QWEN3_VL_CHAT_TEMPLATE = _qwen_chat_template()

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
    processor = _build_processor()
    tokenizer = processor.tokenizer
    model = _build_model(tokenizer, seed)
    model.generation_config = _build_generation_config(tokenizer)

    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    logger.info("built tiny Qwen3-VL (%d parameters) in %s", model.num_parameters(), out_dir)
    return out_dir


def build_tiny_qwen3_vl_moe(out_dir: Path, seed: int = 0) -> Path:
    """The tiny Qwen3-VL's Mixture-of-Experts sibling (the architecture of Qwen3-VL-30B-A3B):
    the same processor and vision tower, text layers with 4 experts, 2 chosen per token."""
    out_dir = Path(out_dir)
    processor = _build_processor()
    dense = _build_config(processor.tokenizer)
    text = dense.text_config.to_dict()
    text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                decoder_sparse_step=1, mlp_only_layers=[])
    config = Qwen3VLMoeConfig(
        text_config=text, vision_config=dense.vision_config.to_dict(),
        image_token_id=dense.image_token_id, video_token_id=dense.video_token_id,
        vision_start_token_id=dense.vision_start_token_id,
        vision_end_token_id=dense.vision_end_token_id, tie_word_embeddings=False)
    model = _seeded(seed, lambda: Qwen3VLMoeForConditionalGeneration(config)).eval()
    model.generation_config = _build_generation_config(processor.tokenizer)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    logger.info("built tiny Qwen3-VL-MoE (%d parameters) in %s", model.num_parameters(), out_dir)
    return out_dir


def _build_processor() -> Qwen3VLProcessor:
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


def _build_config(tokenizer) -> Qwen3VLConfig:
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
    config = _build_config(tokenizer)
    # Weight init draws from torch's global RNG; fork it so callers' RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration(config)
    return model.eval()


def _build_generation_config(tokenizer) -> GenerationConfig:
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


# --- Qwen-Image-Edit ----------------------------------------------------------------

# Qwen2.5-VL's prompt format. The edit pipeline formats its own prompt and never
# applies it, but the real processor ships one, so anything chatting with the text
# encoder through the processor behaves as with the real checkpoint.
QWEN2_5_VL_CHAT_TEMPLATE = _qwen_chat_template("You are a helpful assistant.")

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
    processor = _build_edit_processor()
    tokenizer = processor.tokenizer
    pipeline = pipeline_class(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
        vae=_seeded(seed, _build_edit_vae),
        text_encoder=_seeded(seed, lambda: _build_edit_text_encoder(tokenizer)),
        tokenizer=tokenizer,
        processor=processor,
        transformer=_seeded(seed, _build_edit_transformer),
    )
    return _save_pipeline(pipeline, out_dir)


def _save_pipeline(pipeline: DiffusionPipeline, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(out_dir)
    n_params = sum(p.numel() for module in pipeline.components.values()
                   if isinstance(module, torch.nn.Module) for p in module.parameters())
    logger.info("built a tiny %s (%d parameters) in %s", type(pipeline).__name__, n_params, out_dir)
    return out_dir


_Module = TypeVar("_Module", bound=torch.nn.Module)


def _seeded(seed: int, build: Callable[[], _Module]) -> _Module:
    """Build one component from its own seeded RNG, so its weights do not depend on the others."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _build_edit_processor() -> Qwen2VLProcessor:
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


# --- FLUX.1 Kontext ------------------------------------------------------------------

# FLUX.1-Kontext-dev's components at toy sizes: CLIP-L (pooled prompt), T5-XXL (prompt
# tokens), a 16-channel VAE and a guidance-distilled MMDiT. The transformer reads the T5
# hidden states (joint_attention_dim) and CLIP's pooled output (pooled_projection_dim).
KONTEXT_CLIP_HIDDEN_SIZE = 32
KONTEXT_T5_HIDDEN_SIZE = 32
# CLIP's context: the pipeline pads and cuts prompts to the tokenizer's model_max_length.
_CLIP_MAX_LENGTH = 77
# Like the tiny Qwen VAE, 16x downsampling (the real one: 8x): the pipeline resizes the
# input image to about one megapixel, which 8x would make 4096 image tokens.
_KONTEXT_VAE_LEVELS = 5
# FLUX.1's scheduler_config.json.
FLUX_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def build_tiny_flux_kontext(out_dir: Path, seed: int = 0) -> Path:
    """Build a tiny random ``FluxKontextPipeline`` with fixed seeds; save it into ``out_dir``."""
    clip_tokenizer, t5_tokenizer = _build_clip_tokenizer(), _build_t5_tokenizer()
    pipeline = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG),
        vae=_seeded(seed, _build_kontext_vae),
        text_encoder=_seeded(seed, lambda: _build_clip_text_encoder(clip_tokenizer)),
        tokenizer=clip_tokenizer,
        text_encoder_2=_seeded(seed, lambda: _build_t5_encoder(t5_tokenizer)),
        tokenizer_2=t5_tokenizer,
        transformer=_seeded(seed, _build_kontext_transformer),
    )
    return _save_pipeline(pipeline, Path(out_dir))


def _build_clip_tokenizer() -> CLIPTokenizer:
    """CLIP's byte-level BPE over the 256 byte symbols, each also as a word end, no merges:
    every text is encodable, one token per byte."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*alphabet, *(symbol + "</w>" for symbol in alphabet), "<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=[],
                         model_max_length=_CLIP_MAX_LENGTH)


def _build_t5_tokenizer() -> T5Tokenizer:
    """T5's unigram model over the project corpus: its words and characters."""
    words = sorted({word for text in CORPUS for word in text.split()})
    characters = sorted({char for text in CORPUS for char in text if not char.isspace()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, -5.0) for word in words]
    vocab += [(char, -10.0) for char in characters]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _build_clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=KONTEXT_CLIP_HIDDEN_SIZE,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_MAX_LENGTH,
        projection_dim=KONTEXT_CLIP_HIDDEN_SIZE,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _build_t5_encoder(tokenizer: T5Tokenizer) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=KONTEXT_T5_HIDDEN_SIZE,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _build_kontext_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * _KONTEXT_VAE_LEVELS,
        up_block_types=("UpDecoderBlock2D",) * _KONTEXT_VAE_LEVELS,
        block_out_channels=(4,) * _KONTEXT_VAE_LEVELS,
        layers_per_block=1,
        latent_channels=EDIT_LATENT_CHANNELS,
        norm_num_groups=1,
        # FLUX.1's VAE has no quant convs; its latent statistics (shift, scale) are kept.
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,
        scaling_factor=0.3611,
    )


def _build_kontext_transformer() -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        # Latents are packed in 2x2 patches, as in the Qwen pipelines.
        in_channels=4 * EDIT_LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=sum(EDIT_AXES_DIMS_ROPE),
        num_attention_heads=2,
        joint_attention_dim=KONTEXT_T5_HIDDEN_SIZE,
        pooled_projection_dim=KONTEXT_CLIP_HIDDEN_SIZE,
        # FLUX.1-Kontext-dev is guidance-distilled: guidance_scale is an input of the model.
        guidance_embeds=True,
        axes_dims_rope=EDIT_AXES_DIMS_ROPE,
    )


# --- LoRA ------------------------------------------------------------------------------

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
