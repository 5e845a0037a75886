"""Real-size architectures with random weights, built on the GPU (no hub, no download).

Qwen3-VL-8B-Instruct's configuration (8.8B parameters, 17.5 GB in bf16) is written out
here from its published config.json. The tokenizer is the project's tiny one padded with
placeholder tokens ``<tN>`` to the real 151,936 entries, so every id the random model
emits decodes to distinct text (outputs can be compared exactly). The image processor
uses the real pixel limits, so an image costs as many vision tokens as with the real model.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import (
    AutoProcessor,
    Qwen2_5_VLConfig,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeConfig,
    Qwen3VLMoeForConditionalGeneration,
)

from workers.models.tiny import build_tiny_qwen3_vl

REAL_VOCAB = 151_936


def qwen3_vl_8b_config(tokenizer) -> Qwen3VLConfig:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return Qwen3VLConfig(
        text_config={
            "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "vocab_size": REAL_VOCAB, "max_position_embeddings": 262144, "rms_norm_eps": 1e-6,
            "hidden_act": "silu", "attention_bias": False, "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000,
                                "mrope_section": [24, 20, 20], "mrope_interleaved": True},
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        },
        vision_config={
            "depth": 27, "hidden_size": 1152, "intermediate_size": 4304, "num_heads": 16,
            "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
            "out_hidden_size": 4096, "num_position_embeddings": 2304, "in_channels": 3,
            "deepstack_visual_indexes": [8, 16, 24], "hidden_act": "gelu_pytorch_tanh",
        },
        tie_word_embeddings=False,
        **ids,
    )


def pad_vocabulary(tokenizer, size: int = REAL_VOCAB) -> None:
    from tokenizers import AddedToken

    tokenizer.add_tokens([AddedToken(f"<t{i}>", normalized=False, special=False)
                          for i in range(size - len(tokenizer))])


def qwen3_vl_30b_a3b_config(tokenizer) -> Qwen3VLMoeConfig:
    """Qwen3-VL-30B-A3B-Instruct (31B parameters, 3B active per token): the 8B's vision tower
    with a 2048-wide output, 48 text layers of 128 experts (8 per token)."""
    dense = qwen3_vl_8b_config(tokenizer)
    text = dense.text_config.to_dict()
    text.update(hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
                num_experts_per_tok=8, moe_intermediate_size=768, decoder_sparse_step=1,
                mlp_only_layers=[], norm_topk_prob=True)
    vision = dense.vision_config.to_dict()
    vision["out_hidden_size"] = 2048
    return Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False,
                            image_token_id=dense.image_token_id, video_token_id=dense.video_token_id,
                            vision_start_token_id=dense.vision_start_token_id,
                            vision_end_token_id=dense.vision_end_token_id)


def random_qwen3_vl(kind: str = "8b", seed: int = 0, *, text_layers: int | None = None,
                    dtype: torch.dtype = torch.bfloat16):
    """(processor, model) of a real-size Qwen3-VL ("8b" or "30b-a3b") with random weights
    (bf16 unless told), built straight on the GPU (nothing saved), with the real image
    processor limits; ``text_layers`` cuts the text model to its first layers. "tiny" is the
    tests' tiny model on the CPU in float32 (a smoke test of a benchmark)."""
    import tempfile

    from workers.models import load_vlm

    with tempfile.TemporaryDirectory() as directory:
        tiny = build_tiny_qwen3_vl(Path(directory) / "tiny")
        if kind == "tiny":
            return load_vlm(str(tiny), revision="", dtype=torch.float32, device=torch.device("cpu"))
        processor = AutoProcessor.from_pretrained(tiny)
    pad_vocabulary(processor.tokenizer)
    processor.image_processor.size = {"shortest_edge": 65536, "longest_edge": 16777216}
    processor.tokenizer.padding_side = "left"
    if kind == "8b":
        config, model_class = qwen3_vl_8b_config(processor.tokenizer), Qwen3VLForConditionalGeneration
    else:
        config, model_class = qwen3_vl_30b_a3b_config(processor.tokenizer), Qwen3VLMoeForConditionalGeneration
    if text_layers is not None:
        config.text_config.num_hidden_layers = text_layers
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = model_class._from_config(config, dtype=dtype)
    if kind != "8b":  # the experts as the product loads them (workers/models/loading.py)
        from workers.models.loading import FAST_EXPERTS

        model.set_experts_implementation(FAST_EXPERTS)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    return processor, model.eval()


def build_random_qwen3_vl_8b(out_dir: Path, seed: int = 0) -> Path:
    """Save a random-weight Qwen3-VL-8B (bf16) and a processor with real pixel limits."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tiny = build_tiny_qwen3_vl(out_dir.parent / "tiny-for-bench")
    processor = AutoProcessor.from_pretrained(tiny)
    pad_vocabulary(processor.tokenizer)
    # Qwen3-VL's own limits: up to 16M pixels, so a 1280x960 image is 1200 vision tokens.
    processor.image_processor.size = {"shortest_edge": 65536, "longest_edge": 16777216}
    config = qwen3_vl_8b_config(processor.tokenizer)
    torch.manual_seed(seed)
    start = time.perf_counter()
    with torch.device("cuda"):
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    print(f"built {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters "
          f"in {time.perf_counter() - start:.1f}s -> {out_dir}", flush=True)
    del model
    torch.cuda.empty_cache()
    return out_dir


# --- Qwen-Image-Edit ------------------------------------------------------------------
#
# The real pipeline: a 60-layer QwenImageTransformer2DModel (20.43B parameters), the
# Qwen2.5-VL-7B text encoder (8.29B) and the Qwen-Image VAE (0.13B): 57.7 GB in bf16.
# diffusers' defaults for QwenImageTransformer2DModel and AutoencoderKLQwenImage are
# Qwen-Image's own configuration; only the layer counts are scaled here.

EDITOR_LAYERS_FULL = 60
TEXT_ENCODER_LAYERS_FULL = 28
# The default scale: a 20.3 GB editor (10.2B parameters). The full 57.7 GB one beside the
# 17.5 GB judge needs 75 GB of disk (the H100 host has 64 GB) and ~3x the build and move time.
EDITOR_LAYERS_DEFAULT = 16
TEXT_ENCODER_LAYERS_DEFAULT = 12
QWEN2_5_VL_VOCAB = 152_064
# Qwen2.5-VL's image processor (Qwen-Image-Edit's processor/preprocessor_config.json):
# 14 px patches, 2x2 merge, 3,136 to 12,845,056 pixels, the CLIP normalisation.
QWEN2_5_VL_MIN_PIXELS = 56 * 56
QWEN2_5_VL_MAX_PIXELS = 28 * 28 * 16384


def qwen2_5_vl_7b_config(tokenizer, layers: int = TEXT_ENCODER_LAYERS_FULL) -> Qwen2_5_VLConfig:
    """Qwen-Image-Edit's text_encoder/config.json (Qwen2.5-VL-7B), with ``layers`` text layers."""
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": layers,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": QWEN2_5_VL_VOCAB,
            "max_position_embeddings": 128000, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                "mrope_section": [16, 24, 24]},
            "bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
        },
        vision_config={
            "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
            "in_channels": 3, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
            "tokens_per_second": 2, "hidden_act": "silu",
        },
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


def qwen_image_edit_processor():
    """The project's tiny tokenizer with Qwen2.5-VL's real image processor limits.

    Not padded to the vocabulary (unlike the judge's): the edit pipeline only *encodes*
    with the text encoder, never generates, so no id beyond the tokenizer's is ever looked
    up; what must match the config are the special tokens' ids (the config takes them from
    this tokenizer). Padding to 152,064 entries would add ~20 s to every pipeline load
    (measured on a CPU) and change no computation. The image limits are the real ones, so
    the ~1024x1024 image the pipeline shows the text encoder costs the real ~1,369 tokens.
    """
    from workers.models.tiny.qwen_image_edit import build_edit_processor

    processor = build_edit_processor()
    size = {"shortest_edge": QWEN2_5_VL_MIN_PIXELS, "longest_edge": QWEN2_5_VL_MAX_PIXELS}
    processor.image_processor.size = dict(size)
    processor.video_processor.size = dict(size)
    return processor


def random_qwen_image_edit(editor_layers: int = EDITOR_LAYERS_FULL,
                           text_encoder_layers: int = TEXT_ENCODER_LAYERS_FULL,
                           seed: int = 0, device: str = "cuda"):
    """A random-weight QwenImageEditPipeline (bf16) built straight on ``device``, nothing saved.

    The real configuration except ``editor_layers`` transformer layers (60 in the real
    model) and ``text_encoder_layers`` text-encoder layers (28).
    """
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler,
                           QwenImageEditPipeline, QwenImageTransformer2DModel)
    from transformers import Qwen2_5_VLForConditionalGeneration

    from workers.models.tiny.qwen_image_edit import QWEN_IMAGE_SCHEDULER_CONFIG

    processor = qwen_image_edit_processor()
    config = qwen2_5_vl_7b_config(processor.tokenizer, text_encoder_layers)
    torch.manual_seed(seed)
    # diffusers models take no dtype argument: the default dtype makes them bf16 from the
    # start (the full transformer would need 82 GB in float32).
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            transformer = QwenImageTransformer2DModel(num_layers=editor_layers)
            vae = AutoencoderKLQwenImage()
            text_encoder = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    finally:
        torch.set_default_dtype(previous)
    return QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG), vae=vae,
        text_encoder=text_encoder, tokenizer=processor.tokenizer, processor=processor,
        transformer=transformer)


def build_random_qwen_image_edit(out_dir: Path, editor_layers: int = EDITOR_LAYERS_DEFAULT,
                                 text_encoder_layers: int = TEXT_ENCODER_LAYERS_DEFAULT,
                                 seed: int = 0, device: str = "cuda") -> Path:
    """Save a random-weight QwenImageEditPipeline (bf16, created on ``device``) into ``out_dir``.

    See :func:`random_qwen_image_edit`. Built into a temporary folder and renamed, so an
    interrupted build is never mistaken for a finished one.
    """
    import gc
    import shutil

    out_dir = Path(out_dir)
    if (out_dir / "model_index.json").exists():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    pipeline = random_qwen_image_edit(editor_layers, text_encoder_layers, seed, device)
    pipeline.save_pretrained(tmp)
    tmp.rename(out_dir)
    n = sum(p.numel() for m in (pipeline.transformer, pipeline.vae, pipeline.text_encoder)
            for p in m.parameters())
    print(f"built Qwen-Image-Edit ({editor_layers}/{EDITOR_LAYERS_FULL} transformer layers, "
          f"{text_encoder_layers}/{TEXT_ENCODER_LAYERS_FULL} text-encoder layers), "
          f"{n / 1e9:.2f}B parameters in {time.perf_counter() - start:.1f}s -> {out_dir}", flush=True)
    del pipeline
    gc.collect()  # so empty_cache below can hand the memory back before the fleet starts
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out_dir


def checkpoint_stats(model_dir: Path) -> dict[str, dict[str, int]]:
    """Parameters and bytes per component folder ("." for a transformers checkpoint), read from
    the safetensors headers: nothing is loaded."""
    import json
    import struct

    stats: dict[str, dict[str, int]] = {}
    for path in sorted(Path(model_dir).rglob("*.safetensors")):
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        entry = stats.setdefault(str(path.parent.relative_to(model_dir)), {"parameters": 0, "bytes": 0})
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            numel = 1
            for dim in tensor["shape"]:
                numel *= dim
            entry["parameters"] += numel
            entry["bytes"] += tensor["data_offsets"][1] - tensor["data_offsets"][0]
    return stats
