"""Build tiny random-weight checkpoints on disk: Qwen3-VL (dense and MoE) and the edit
pipelines (Qwen-Image-Edit, Qwen-Image-Edit-Plus, FLUX.1 Kontext), and LoRAs for those.

Each checkpoint has the real layout (config.json, safetensors, tokenizer and
processor files; for an editor, diffusers' model_index.json and one folder per
component), so it is loaded by the same ``from_pretrained`` code as
``Qwen/Qwen3-VL-8B-Instruct`` or ``Qwen/Qwen-Image-Edit``. Their outputs are
gibberish; they exist so the fleet, its tests and the one-command mode run end
to end on a CPU with no download.

One module per family; this package names each family's builder.
"""

from workers.models.tiny.flux_kontext import build_tiny_flux_kontext
from workers.models.tiny.loras import build_tiny_lora
from workers.models.tiny.qwen3_vl import build_tiny_qwen3_vl
from workers.models.tiny.qwen3_vl_moe import build_tiny_qwen3_vl_moe
from workers.models.tiny.qwen_image_edit import build_tiny_qwen_image_edit, build_tiny_qwen_image_edit_plus

__all__ = [
    "build_tiny_flux_kontext",
    "build_tiny_lora",
    "build_tiny_qwen3_vl",
    "build_tiny_qwen3_vl_moe",
    "build_tiny_qwen_image_edit",
    "build_tiny_qwen_image_edit_plus",
]
