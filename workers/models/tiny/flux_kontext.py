"""The tiny FLUX.1 Kontext pipeline."""

from __future__ import annotations

from pathlib import Path

from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxTransformer2DModel,
)
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from workers.models.tiny.components import save_pipeline, seeded
from workers.models.tiny.qwen_image_edit import EDIT_AXES_DIMS_ROPE, EDIT_LATENT_CHANNELS
from workers.models.tokenizer import CORPUS

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
        vae=seeded(seed, _build_kontext_vae),
        text_encoder=seeded(seed, lambda: _build_clip_text_encoder(clip_tokenizer)),
        tokenizer=clip_tokenizer,
        text_encoder_2=seeded(seed, lambda: _build_t5_encoder(t5_tokenizer)),
        tokenizer_2=t5_tokenizer,
        transformer=seeded(seed, _build_kontext_transformer),
    )
    return save_pipeline(pipeline, Path(out_dir))


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
