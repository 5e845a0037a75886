"""The paged engine on tiny Qwen3-VLs (dense and Mixture-of-Experts), float32 on the CPU.

Whatever the blocks, the step budget, the pool and the per-row budgets, every row's tokens
must be those of ``model.generate`` on its whole prompt.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from config.settings import RELATIONS_ENGINES, SettingsError, load_settings
from workers.models import load_vlm
from workers.relations.engine.engine import PagedEngine
from workers.relations.engine.kv_cache import bytes_per_block
from workers.relations.generator import ENGINES, RelationGenerator

# Prompts of different lengths, one CPU thread, and the slot decoder's images and reference.
from test_decoding import MAX_NEW_TOKENS, PROMPTS, one_cpu_thread  # noqa: E402,F401
from test_slot_decoder import _reference, images, texts  # noqa: E402,F401


@pytest.fixture(scope="module")
def vlm(each_tiny_vlm_dir):
    return load_vlm(str(each_tiny_vlm_dir), revision="", dtype=torch.float32, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def expected(vlm, images, texts) -> list[list[list[int]]]:
    return _reference(vlm, images, texts)


def _greedy(engine: PagedEngine, images, texts, *, max_batch: int = 64, budgets=MAX_NEW_TOKENS,
            cache_bytes: int | None = None):
    return engine.generate(images, texts, max_batch=max_batch, cache_bytes=cache_bytes,
                           max_new_tokens=budgets, temperature=0.0, seed=0)


def test_every_row_equals_generate_across_blocks_and_chunks(vlm, images, texts, expected) -> None:
    # Blocks of 4 tokens: rows cross several; 16 prefill tokens a step: prefixes and suffixes
    # are cut over steps, and rows of all three images decode in one forward.
    engine = PagedEngine(*vlm, block_size=4, step_tokens=16)
    assert _greedy(engine, images, texts) == expected
    assert engine.stats.prefills == len(images) and engine.stats.preemptions == 0
    # One block per row and a budget wider than any suffix: rows start whole.
    engine = PagedEngine(*vlm, block_size=64, step_tokens=4096)
    assert _greedy(engine, images, texts, max_batch=4) == expected


def test_the_cuda_path_equals_generate_under_tritons_interpreter(
        each_tiny_vlm_dir, images, texts, expected, tmp_path) -> None:
    """The GPU's path (step buffers, block tables, tiles, the two Triton kernels), run by
    Triton's interpreter on the CPU: 3 rows at a time, so rows start, end and reuse places.
    On the dense model only (the interpreter is slow; the experts are no part of this path)."""
    if "moe" in each_tiny_vlm_dir.name.lower():
        pytest.skip("the dense model covers the kernels' path")
    got = _interpreted(each_tiny_vlm_dir, images, tmp_path, texts=texts, block_size=4,
                       step_tokens=16, max_batch=3, max_new_tokens=MAX_NEW_TOKENS)
    assert got["attention"] == "kernels"
    assert got["tokens"] == expected


def test_steps_planned_ahead_give_the_same_tokens_and_stop_at_eos_and_budgets(
        each_tiny_vlm_dir, vlm, images, texts, expected, tmp_path, monkeypatch) -> None:
    """Each step planned and queued before the last one's tokens are known (on the kernels'
    path, under the interpreter): a row's eos is known a step late, its extra token dropped."""
    if "moe" in each_tiny_vlm_dir.name.lower():
        pytest.skip("the dense model covers the kernels' path")
    eos = expected[0][0][3]  # the first row emits it at its 4th token, for the first time
    assert eos not in expected[0][0][:3]
    monkeypatch.setattr(vlm[1].generation_config, "eos_token_id", [eos])
    with_eos = _reference(vlm, images, texts)
    budgets = [[(i * 7 + j * 3) % MAX_NEW_TOKENS + 1 for j in range(len(group))]
               for i, group in enumerate(texts)]
    got = _interpreted(each_tiny_vlm_dir, images, tmp_path, texts=texts, block_size=4,
                       step_tokens=16, max_batch=3, max_new_tokens=budgets, eos=eos,
                       plan_ahead=True)
    assert got["tokens"] == [[row[:budget] for row, budget in zip(group, group_budgets)]
                             for group, group_budgets in zip(with_eos, budgets)]


def _interpreted(model_dir, images, directory, **request) -> dict:
    """The engine's output from tests/interpreted_engine.py (a process of its own)."""
    paths = []
    for index, image in enumerate(images):
        paths.append(str(directory / f"{index}.png"))
        image.save(paths[-1])
    (directory / "request.json").write_text(json.dumps({"images": paths, **request}))
    script = Path(__file__).parent / "interpreted_engine.py"
    done = subprocess.run([sys.executable, str(script), str(model_dir),
                           str(directory / "request.json")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_rows_preempted_when_blocks_run_out_are_recomputed_to_the_same_tokens(
        vlm, images, texts, expected) -> None:
    engine = PagedEngine(*vlm, block_size=4, step_tokens=32)
    config = vlm[1].config.text_config
    per_block = bytes_per_block(config.num_hidden_layers, config.num_key_value_heads,
                                config.head_dim, torch.float32, 4)
    # Room for the largest prefix and a few rows: rows are preempted and start again.
    largest_prefix = max(engine.adapter.prefix_tokens(image, engine.adapter.split(group)[0])
                         for image, group in zip(images, texts))
    blocks = -(-largest_prefix // 4) + 3 * -(-(40 + MAX_NEW_TOKENS) // 4)
    assert _greedy(engine, images, texts, cache_bytes=blocks * per_block) == expected
    assert engine.stats.preemptions > 0 and engine.stats.blocks == blocks


def test_rows_stop_at_their_own_budgets_and_eos(vlm, images, texts, expected, monkeypatch) -> None:
    budgets = [[(i * 7 + j * 3) % MAX_NEW_TOKENS + 1 for j in range(len(group))]
               for i, group in enumerate(texts)]
    engine = PagedEngine(*vlm, block_size=4, step_tokens=16)
    got = _greedy(engine, images, texts, max_batch=3, budgets=budgets)
    assert got == [[row[:b] for row, b in zip(group, bs)] for group, bs in zip(expected, budgets)]
    assert engine.stats.live_row_steps == sum(map(len, (row for group in got for row in group)))
    # A token the first row emits at step 3 for the first time becomes the eos.
    eos = expected[0][0][3]
    assert eos not in expected[0][0][:3]
    monkeypatch.setattr(vlm[1].generation_config, "eos_token_id", [eos])
    engine = PagedEngine(*vlm, block_size=4, step_tokens=16)
    assert _greedy(engine, images, texts, max_batch=2) == _reference(vlm, images, texts)


@pytest.mark.parametrize("name", list(ENGINES))
def test_sampling_is_seeded(vlm, images, texts, name) -> None:
    """Either engine: the same seed samples the same tokens, another seed others."""
    engine = ENGINES[name](*vlm)

    def sample(seed: int):
        return engine.generate(images, texts, max_batch=4, max_new_tokens=MAX_NEW_TOKENS,
                               temperature=1.0, seed=seed)

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first


def test_the_generator_answers_with_the_paged_engine(vlm, images, texts, expected, caplog) -> None:
    generator = RelationGenerator(*vlm, max_batch=4, max_new_tokens=MAX_NEW_TOKENS,
                                  temperature=0.0, engine="paged")
    assert isinstance(generator.decoder, PagedEngine)
    heard = []
    with caplog.at_level(logging.INFO):
        answers = generator.generate_many(images, [PROMPTS, PROMPTS[:3], PROMPTS[1:]], seed=0,
                                          on_answer=lambda *answer: heard.append(answer))
    assert answers == [[vlm[0].decode(row, skip_special_tokens=True).strip() for row in group]
                       for group in expected]
    assert sorted(heard) == sorted((i, j, text) for i, group in enumerate(answers)
                                   for j, text in enumerate(group))
    assert "paged cache:" in caplog.text and "occupancy" in caplog.text


def test_the_engine_is_a_setting_slot_by_default() -> None:
    assert load_settings({}).relations_engine == "slot"
    assert set(ENGINES) == set(RELATIONS_ENGINES)  # every engine the setting names exists
    assert load_settings({"EVALFLEET_RELATIONS_ENGINE": "paged"}).relations_engine == "paged"
    with pytest.raises(SettingsError, match="RELATIONS_ENGINE='fast': use slot or paged"):
        load_settings({"EVALFLEET_RELATIONS_ENGINE": "fast"})
