"""The benchmarks' baseline, the slot decoder (bench/slot_decoder.py), on a GPU: replayed CUDA
graphs decode exactly as the eager steps do.

Tiny dense and Mixture-of-Experts Qwen3-VLs in bf16 on CUDA (flash attention, the Triton row
kernel, the compiled layer functions, ``grouped_mm`` experts), several images of different
prefix lengths, rows ending at different steps and refilled, layouts of different batches in
one process. The float32 CPU tests (test_slot_decoder.py) compare with ``model.generate``;
here the graphs are compared with the same kernels run eagerly, so rows must match exactly.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from bench.slot_decoder import SlotDecoder
from workers.models import load_vlm
from workers.relations.generator import render_prompt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPTS = ["Where is the cat relative to the table?", "hi", "Is the person holding the cup?",
           "Describe the spatial relation between the red car and the tall building on its left."]


@pytest.fixture(scope="module")
def vlm(each_tiny_vlm_dir):
    return load_vlm(str(each_tiny_vlm_dir), revision="", dtype=torch.bfloat16, device=torch.device("cuda"))


@pytest.mark.parametrize("max_batch", [64, 4])
def test_replayed_graphs_decode_as_the_eager_steps(vlm, max_batch) -> None:
    processor, model = vlm
    images = [Image.linear_gradient("L").resize((256, 256)).convert("RGB"),
              Image.radial_gradient("L").resize((128, 192)).convert("RGB"),
              Image.linear_gradient("L").resize((64, 96)).convert("RGB")]
    texts = [[render_prompt(processor, p) for p in PROMPTS[:count]] for count in (4, 2, 3)]
    budgets = [[(i * 7 + j * 3) % 12 + 1 for j in range(len(group))] for i, group in enumerate(texts)]

    def run(use_cuda_graph: bool):
        decoder = SlotDecoder(processor, model, use_cuda_graph=use_cuda_graph)
        return decoder.generate(images, texts, max_batch=max_batch, max_new_tokens=budgets,
                                temperature=0.0, seed=0), decoder

    eager, _ = run(False)
    graphs, decoder = run(True)
    assert decoder.flash  # the GPU kernels ran, not the CPU fallback
    assert graphs == eager
    assert all(0 < len(row) <= budget for group, group_budgets in zip(graphs, budgets)
               for row, budget in zip(group, group_budgets))
