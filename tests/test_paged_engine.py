"""The paged engine on tiny Qwen3-VLs (dense and Mixture-of-Experts), float32 on the CPU.

Whatever the blocks, the step budget, the pool and the per-row budgets, every row's tokens
must be those of ``model.generate`` on its whole prompt.
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from PIL import Image

from bench.static_decoder import cut_after_eos
from config import Settings, ignored_variables, load_settings
from producer.relations.enqueue import run_settings
from shared.relations.run_settings import LOCAL_ENGINE, RelationsRunSettings
from workers.models import load_vlm
from workers.relations.decoding import split_after_image
from workers.relations.engine.engine import PagedEngine
from workers.relations.engine.kv_cache import bytes_per_block
from workers.relations.generator import RelationGenerator, render_prompt
from workers.relations.image_inputs import prefix_tokens
from workers.residency import ResidencyPool, model_bytes

# Prompts of different lengths, one CPU thread.
from test_decoding import MAX_NEW_TOKENS, PROMPTS, one_cpu_thread  # noqa: E402,F401


@pytest.fixture(scope="module")
def vlm(each_tiny_vlm_dir):
    return load_vlm(str(each_tiny_vlm_dir), revision="", dtype=torch.float32, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    # Different sizes: different numbers of image tokens, so prefixes of different lengths.
    return [Image.linear_gradient("L").resize((256, 256)).convert("RGB"),
            Image.radial_gradient("L").resize((128, 192)).convert("RGB"),
            Image.linear_gradient("L").resize((64, 96)).convert("RGB")]


@pytest.fixture(scope="module")
def texts(vlm) -> list[list[str]]:
    rendered = [render_prompt(vlm[0], prompt) for prompt in PROMPTS]
    return [rendered, rendered[:3], rendered[1:]]


def _reference(vlm, images, texts) -> list[list[list[int]]]:
    """``model.generate`` on the whole prompts of each image, left-padded, greedy."""
    processor, model = vlm
    eos = model.generation_config.eos_token_id
    rows = []
    for image, image_texts in zip(images, texts):
        inputs = processor(text=image_texts, images=[image] * len(image_texts), padding=True,
                           return_tensors="pt")
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        rows.append(cut_after_eos(output[:, inputs["input_ids"].shape[1]:],
                                  list(eos) if isinstance(eos, list) else [eos]))
    return rows


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
    # The project's root on the path: the script imports it however evalfleet is installed.
    root = str(script.parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, str(script), str(model_dir),
                           str(directory / "request.json")],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": path})
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


def test_sampling_is_seeded(vlm, images, texts) -> None:
    """The same seed samples the same tokens, another seed others."""
    engine = PagedEngine(*vlm)

    def sample(seed: int):
        return engine.generate(images, texts, max_batch=4, max_new_tokens=MAX_NEW_TOKENS,
                               temperature=1.0, seed=seed)

    first = sample(1)
    assert sample(1) == first
    assert sample(2) != first


def test_the_generator_answers_each_image_in_order_as_rows_end(vlm, images, texts, monkeypatch,
                                                               caplog) -> None:
    # A token the first row emits at step 3 for the first time becomes the eos: answers end
    # there, the others run to the budget.
    eos = _reference(vlm, images[:1], texts[:1])[0][0][3]
    monkeypatch.setattr(vlm[1].generation_config, "eos_token_id", [eos])
    expected = _reference(vlm, images[:2], [texts[0], texts[0][:2]])
    assert len(expected[0][0]) == 4 and max(len(row) for row in expected[0]) == MAX_NEW_TOKENS

    generator = RelationGenerator(*vlm, max_batch=2, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    assert isinstance(generator.decoder, PagedEngine)  # the product's one decoder
    heard = []
    with caplog.at_level(logging.INFO):
        answers = generator.generate_many(images, [PROMPTS, PROMPTS[:2], []], seed=0,
                                          on_answer=lambda *answer: heard.append(answer))
    # Every answer is told once, as its row ends: the one that met its eos first, while the
    # others still decoded (the task stores each pair as its answers are complete).
    assert sorted(heard) == sorted((i, j, text) for i, group in enumerate(answers)
                                   for j, text in enumerate(group))
    assert heard[0] == (0, 0, answers[0][0])
    # The worker log says how busy the rows were and where the call's time went.
    assert f"paged engine decoded {len(PROMPTS) + 2} prompts of 3 images" in caplog.text
    assert "paged cache:" in caplog.text and "occupancy" in caplog.text
    stats = generator.decoder.stats
    assert "decode" in stats.phases and sum(stats.phases.values()) <= stats.seconds
    # Each answer is its row of model.generate, decoded without the eos; the count keeps it.
    assert answers == [[vlm[0].decode(row, skip_special_tokens=True).strip() for row in group]
                       for group in expected] + [[]]
    assert generator.generated_tokens == sum(len(row) for group in expected for row in group)
    assert generator.generate(images[0], [], seed=0) == []


def test_evicting_the_model_frees_the_engines_cache(vlm, images, texts) -> None:
    processor, model = vlm
    engine = PagedEngine(processor, model)
    pool = ResidencyPool(torch.device("cpu"), budget_bytes=model_bytes([model]) * 4)
    pool.register("vlm", lambda: {"model": model})
    pool.acquire("vlm")
    budget = pool.room_for_working("vlm") // 2
    pool.set_working_bytes("vlm", budget, release=engine.release)
    assert pool.resident_bytes == model_bytes([model]) + budget

    _greedy(engine, images, texts, max_batch=8, cache_bytes=budget)
    assert engine.cache_bytes > 0
    cache = weakref.ref(engine._cache)
    # Another model that needs the room: the engine's model goes, and its cache with it.
    other = torch.nn.Linear(4, 4)
    pool.register("other", lambda: {"other": other}, expected_bytes=pool.budget_bytes - 1)
    pool.acquire("other")
    gc.collect()
    assert pool.resident == ["other"] and engine.cache_bytes == 0 and cache() is None


@pytest.mark.parametrize("longest_edge", [None, 16384 * 32 * 32])  # the tiny's and Qwen3-VL's
def test_a_prefix_is_counted_from_the_image_size_as_the_processor_expands_it(vlm, longest_edge) -> None:
    # The engine sizes its cache from these counts before any image is processed.
    processor = vlm[0]
    if longest_edge:
        processor = copy.deepcopy(processor)
        processor.image_processor.size = {"longest_edge": longest_edge, "shortest_edge": 65536}
    prefix = split_after_image(render_prompt(processor, "where?"))[0]
    for width, height in ((1280, 960), (97, 31), (4000, 30), (640, 2000), (28, 28)):
        image = Image.new("RGB", (width, height))
        processed = processor(text=[prefix], images=[image], return_tensors="pt")
        assert prefix_tokens(processor, image, prefix) == processed["input_ids"].shape[1]
    # The count refuses what the processor refuses (the relations task asks it before
    # generation, so such an image fails alone).
    for width, height in ((1, 300), (201, 1), (5000, 20)):
        image = Image.new("RGB", (width, height))
        with pytest.raises(ValueError, match="aspect ratio"):
            processor(text=[prefix], images=[image], return_tensors="pt")
        with pytest.raises(ValueError, match="aspect ratio"):
            prefix_tokens(processor, image, prefix)


def test_a_processor_that_cannot_count_decodes_the_same(vlm, images, texts, expected,
                                                        monkeypatch) -> None:
    # Then every image is processed before the cache is sized.
    monkeypatch.setattr(type(vlm[0].image_processor), "get_number_of_image_patches", None,
                        raising=False)
    assert prefix_tokens(vlm[0], images[0], split_after_image(texts[0][0])[0]) is None
    engine = PagedEngine(*vlm, block_size=4, step_tokens=16)
    assert _greedy(engine, images, texts, max_batch=4) == expected


def test_the_paged_engine_is_the_only_engine(vlm) -> None:
    generator = RelationGenerator(*vlm, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    assert type(generator.decoder) is PagedEngine and generator.decoder.name == LOCAL_ENGINE == "paged"
    # The setting that chose the slot decoder is gone: whoever still sets it hears why.
    environ = {"EVALFLEET_RELATIONS_ENGINE": "slot"}
    assert ignored_variables(load_settings(environ), environ) == [
        "EVALFLEET_RELATIONS_ENGINE is no longer a setting: ignored (the slot decoder was retired "
        "(bench/slot_decoder.py keeps it as the benchmarks' baseline); the paged engine is the "
        "relations job's only engine)"]
    # Runs registered while it was a choice stored it with their settings: they still load.
    settings = run_settings(Settings())
    stored = {**settings.record(), "relations_engine": "slot"}
    assert RelationsRunSettings.from_record(stored, "an-older-run") == settings
