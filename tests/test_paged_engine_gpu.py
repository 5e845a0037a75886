"""The paged engine on a GPU.

In float32 (the torch reference attention) every row must equal ``model.generate``, for the
tiny models and for Qwen3-VL-8B's shapes (real image sizes, ~1200-token prefixes, real mrope
and deepstack; random weights, the text model cut to a few layers). In bf16 the paged kernel
must give the plain reference's attention at the 8B's head shapes over scattered blocks, the
Triton kernels the reference's outputs on a step that mixes decodes, rows' prefill chunks and
an image prefix's chunk, steps replayed from CUDA graphs the eager steps' tokens, and the
full-size 8B (random bf16 weights) decodes a batch of 128 rows.
"""

from __future__ import annotations

import gc

import pytest
import torch
from PIL import Image

from bench.bench_decoder import prompts as relation_prompts
from bench.real_models import random_qwen3_vl
from bench.static_decoder import cut_after_eos
from workers.models import load_vlm
from workers.relations.decoding import PhaseClock, eos_token_ids
from workers.relations.engine.attention import PagedAttention, ReferenceAttention
from workers.relations.engine.engine import PagedEngine
from workers.relations.engine.kv_cache import BlockPool, KVCache
from workers.relations.engine.model_runner import ModelRunner, token_offsets
from workers.relations.engine.paged_attention import paged_attention, paged_attention_reference
from workers.relations.engine.qwen3_vl import Qwen3VL
from workers.relations.engine.scheduler import Prefix, Row, Scheduler
from workers.relations.engine.step_inputs import Capacity, Places, StepInputs, fill
from workers.relations.generator import render_prompt

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPTS = ["Where is the cat relative to the table?", "hi", "Is the person holding the cup?",
           "Describe the spatial relation between the red car and the tall building on its left."]


def _reference(processor, model, images, texts, max_new_tokens: int) -> list[list[list[int]]]:
    """``model.generate`` on the whole prompts of each image, left-padded, greedy."""
    rows = []
    for image, image_texts in zip(images, texts):
        inputs = processor(text=image_texts, images=[image] * len(image_texts), padding=True,
                           return_tensors="pt").to(model.device)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        rows.append(cut_after_eos(output[:, inputs["input_ids"].shape[1]:], eos_token_ids(model)))
    return rows


def _greedy(engine: PagedEngine, images, texts, max_new_tokens, max_batch: int = 64):
    return engine.generate(images, texts, max_batch=max_batch, max_new_tokens=max_new_tokens,
                           temperature=0.0, seed=0)


def _free() -> None:
    """Give the GPU's memory back once the test dropped its model."""
    gc.collect()
    torch.cuda.empty_cache()


def test_tiny_models_on_cuda_in_float32_equal_generate(each_tiny_vlm_dir) -> None:
    processor, model = load_vlm(str(each_tiny_vlm_dir), revision="", dtype=torch.float32,
                                device=torch.device("cuda"))
    images = [Image.linear_gradient("L").resize((256, 256)).convert("RGB"),
              Image.radial_gradient("L").resize((128, 192)).convert("RGB")]
    texts = [[render_prompt(processor, p) for p in PROMPTS[:count]] for count in (4, 3)]
    engine = PagedEngine(processor, model, block_size=4, step_tokens=16)
    assert _greedy(engine, images, texts, 12, max_batch=3) == _reference(processor, model, images,
                                                                         texts, 12)


def test_paged_kernel_equals_the_reference_over_scattered_blocks() -> None:
    torch.manual_seed(0)
    size, blocks, kv_heads, heads, dim = 16, 160, 8, 32, 128  # the 8B's heads
    keys, values = (torch.randn(blocks * size, kv_heads, dim, dtype=torch.bfloat16, device="cuda")
                    for _ in range(2))
    tables = torch.randperm(blocks, device="cuda")[:150].view(3, 50).to(torch.int32)
    # Rows' next tokens at lengths across block edges, and a prefill chunk of the last row.
    token_row = torch.tensor([0, 0, 1, 1] + [2] * 40, dtype=torch.int32, device="cuda")
    token_used = torch.tensor([1, 16, 17, 800] + list(range(600, 640)), dtype=torch.int32,
                              device="cuda")
    queries = torch.randn(len(token_row), heads, dim, dtype=torch.bfloat16, device="cuda") * dim**-0.5
    output, lse = paged_attention(queries, keys, values, tables, token_row, token_used, size)
    expected, expected_lse = paged_attention_reference(queries, keys, values, tables, token_row,
                                                       token_used, size)
    torch.testing.assert_close(output.float(), expected.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse, expected_lse, atol=1e-3, rtol=1e-3)


def test_paged_attention_equals_the_reference_on_a_mixed_step(tiny_vlm_dir) -> None:
    processor, model = load_vlm(str(tiny_vlm_dir), revision="", dtype=torch.bfloat16,
                                device=torch.device("cuda"))
    # A step with running rows' next tokens, prefill chunks of rows of two images, and a
    # prefix chunk of a third image.
    blocks = BlockPool(64, 4)
    rows = [Row(image=i % 3, index=i, suffix=[5] * (6 + i), max_new_tokens=8) for i in range(7)]
    scheduler = Scheduler(rows, {0: 7, 1: 9, 2: 11}, blocks, max_rows=4, step_tokens=9, eos=set())
    for _ in range(40):  # such a step comes at step 11 (the scheduler alone decides it)
        plan = scheduler.schedule()
        if (plan.decode and any(isinstance(c.sequence, Row) for c in plan.prefill)
                and any(isinstance(c.sequence, Prefix) for c in plan.prefill)):
            break
        scheduler.postprocess(plan, [1] * len(plan.sampling))
    else:
        raise AssertionError("no step mixed decodes, rows' prefill and a prefix's")
    heads, kv_heads, dim = 8, 2, 64
    cache = KVCache(layers=1, kv_heads=kv_heads, head_dim=dim, blocks=64, block_size=4,
                    dtype=torch.bfloat16, device=torch.device("cuda"))
    adapter = Qwen3VL(processor, model)
    runner = ModelRunner(adapter, cache, blocks, images=None, temperature=0.0,
                         seed=0, clock=PhaseClock(model.device))
    offsets = token_offsets(plan)
    capacity = Capacity(tokens=64, rows=8, row_blocks=8, images=4, prefix_blocks=4,
                        group=heads // kv_heads)
    inputs = StepInputs(capacity, torch.device("cuda"))
    positions = {image: torch.zeros(3, prefix.length, dtype=torch.long)
                 for image, prefix in plan.prefixes.items()}
    layout = fill(inputs, plan, blocks, {image: 0 for image in plan.prefixes}, positions,
                  cache.scratch_slot, Places(), {})
    inputs.upload()
    fields = inputs.views(layout.bucket)
    torch.manual_seed(0)
    stored = torch.randn(2, *cache.keys[0].shape, dtype=torch.bfloat16, device="cuda")
    query = torch.randn(1, heads, layout.bucket, dim, dtype=torch.bfloat16, device="cuda") * dim**-0.5
    key, value = (torch.randn(1, kv_heads, layout.bucket, dim, dtype=torch.bfloat16, device="cuda")
                  for _ in range(2))
    tokens = offsets[-1]
    reference = ReferenceAttention([stored[0].clone()], [stored[1].clone()],
                                   runner.reference_step(plan, offsets))(
        0, query[:, :, :tokens], key[:, :, :tokens], value[:, :, :tokens])
    paged = PagedAttention([stored[0].clone()], [stored[1].clone()], fields,
                           tiles=capacity.tiles_for(layout.bucket), block_size=4)(0, query, key, value)
    torch.testing.assert_close(paged[:, :tokens].float(), reference.float(), atol=2e-2, rtol=2e-2)


def test_steps_replayed_from_cuda_graphs_equal_eager_steps() -> None:
    """The same kernels at the same bucket sizes: replayed, every token is the eager one's;
    and with each step planned before the last one's tokens are back."""
    processor, model = random_qwen3_vl("8b", text_layers=4)
    images = [Image.linear_gradient("L").resize((1280, 960)).convert("RGB"),
              Image.radial_gradient("L").resize((960, 640)).convert("RGB")]
    texts = [[render_prompt(processor, p) for p in relation_prompts(24, seed)] for seed in (0, 24)]
    budgets = [[8 + (i * 7 + j * 5) % 40 for j in range(24)] for i in range(2)]
    got = {}
    for graphs, plan_ahead in ((False, False), (True, False), (True, True)):
        engine = PagedEngine(processor, model, step_tokens=256, graphs=graphs,
                             plan_ahead=plan_ahead)
        got[graphs, plan_ahead] = engine.generate(images, texts, max_batch=32,
                                                  max_new_tokens=budgets, temperature=0.0, seed=0)
        stats = engine.stats
        del engine
    del model
    _free()
    assert stats.attention == "kernels and CUDA graphs" and stats.capture_seconds > 0
    assert got[True, False] == got[False, False] == got[True, True]
    assert [[len(row) for row in group] for group in got[True, False]] == budgets


def test_qwen3_vl_8b_shapes_in_float32_equal_generate() -> None:
    processor, model = random_qwen3_vl("8b", text_layers=4, dtype=torch.float32)
    images = [Image.linear_gradient("L").resize((1280, 960)).convert("RGB"),
              Image.radial_gradient("L").resize((960, 640)).convert("RGB")]
    texts = [[render_prompt(processor, p) for p in relation_prompts(3, seed)] for seed in (0, 5)]
    engine = PagedEngine(processor, model, step_tokens=512)  # prefixes cut over steps
    got = _greedy(engine, images, texts, 16)
    expected = _reference(processor, model, images, texts, 16)
    del engine, model
    _free()
    assert got == expected


def test_qwen3_vl_8b_decodes_a_batch_of_128_rows_in_bf16() -> None:
    processor, model = random_qwen3_vl("8b")
    images = [Image.linear_gradient("L").resize((1280, 960)).convert("RGB"),
              Image.radial_gradient("L").resize((1280, 960)).convert("RGB")]
    texts = [[render_prompt(processor, p) for p in relation_prompts(64, seed)] for seed in (0, 64)]
    budgets = [[16 + (i * 7 + j * 5) % 32 for j in range(64)] for i in range(2)]
    engine = PagedEngine(processor, model)
    got = engine.generate(images, texts, max_batch=128, max_new_tokens=budgets, temperature=0.0,
                          seed=0)
    stats = engine.stats
    del engine, model
    _free()
    assert stats.attention == "kernels and CUDA graphs"
    assert all(0 < len(row) <= budget for group, group_budgets in zip(got, budgets)
               for row, budget in zip(group, group_budgets))
    assert sum(len(row) for group in got for row in group) == stats.live_row_steps
    # The rows ran together: the steps are about the longest budget, not the sum.
    assert stats.steps < 2 * max(map(max, budgets)) and stats.preemptions == 0
