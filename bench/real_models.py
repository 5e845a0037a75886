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
from transformers import AutoProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration

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


def hbm_bandwidth_gbs() -> float:
    """Device-to-device copy, bytes read + written, GB/s."""
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / 10
    del x, y
    return 2 * (2 << 30) / seconds / 1e9
