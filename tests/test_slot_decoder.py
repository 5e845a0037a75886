"""The slot decoder on tiny Qwen3-VLs (dense and Mixture-of-Experts), float32 on the CPU.

Whatever the layout (image slots, rows), the refills and the ends of rows, every row's tokens
must be those of ``model.generate`` on its whole prompt.
"""

from __future__ import annotations

import copy
import gc
import logging
import weakref

import pytest
import torch
from PIL import Image

from producer.relations.enqueue import pack_tasks
from bench.static_decoder import cut_after_eos
from workers.relations.decoding import split_after_image
from workers.relations.image_inputs import prefix_tokens
from workers.models import load_vlm
from workers.relations.generator import RelationGenerator
from workers.relations import slot_decoder
from workers.residency import ResidencyPool, model_bytes
from workers.relations.slot_decoder import SlotDecoder, kv_bytes_per_token, slot_shape

# Prompts of different lengths (rows of different suffix lengths), one CPU thread.
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
    rendered = [_render(vlm[0], prompt) for prompt in PROMPTS]
    return [rendered, rendered[:3], rendered[1:]]


@pytest.fixture(scope="module")
def decoder(vlm) -> SlotDecoder:
    return SlotDecoder(*vlm)


def _render(processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


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


def _greedy(decoder, images, texts, max_batch: int, budgets=MAX_NEW_TOKENS):
    return decoder.generate(images, texts, max_batch=max_batch, max_new_tokens=budgets,
                            temperature=0.0, seed=0)


@pytest.mark.parametrize("max_batch", [64, 4, 2, 1])
def test_every_row_equals_generate_whatever_the_layout(vlm, decoder, images, texts,
                                                       max_batch) -> None:
    # 64: all three images at once (4 image slots, 16 rows); 4 and 2: rows are refilled with
    # prompts of any image and image slots take new images mid-call; 1: one row at a time.
    expected = _reference(vlm, images, texts)
    assert _greedy(decoder, images, texts, max_batch) == expected
    assert decoder.stats.prefills == len(images)  # one prefix pass per image, whatever the rows


def test_rows_that_end_early_give_their_slot_to_the_next_prompt(vlm, decoder, images, texts,
                                                                monkeypatch) -> None:
    # The random model rarely emits a real eos, so declare one of its greedy tokens the eos:
    # a token the first row emits at step 3 for the first time; other rows run to the budget.
    plain = _reference(vlm, images, texts)
    eos = plain[0][0][3]
    assert eos not in plain[0][0][:3]
    monkeypatch.setattr(vlm[1].generation_config, "eos_token_id", [eos])
    expected = _reference(vlm, images, texts)
    lengths = [len(row) for group in expected for row in group]
    assert min(lengths) < MAX_NEW_TOKENS == max(lengths), "pick another step"

    assert _greedy(decoder, images, texts, max_batch=2) == expected
    # Token budgets per prompt stand in for eos at chosen steps: every row stops at its own.
    budgets = [[(i * 7 + j * 3) % MAX_NEW_TOKENS + 1 for j in range(len(group))]
               for i, group in enumerate(texts)]
    got = _greedy(decoder, images, texts, max_batch=4, budgets=budgets)
    assert got == [[row[:b] for row, b in zip(group, bs)] for group, bs in zip(expected, budgets)]
    # Slots were refilled: fewer row-steps were spent than one static batch per 4 prompts.
    kept = sum(len(row) for group in got for row in group)
    assert decoder.stats.live_row_steps == kept
    assert decoder.stats.occupancy > 0.5
    # Rows refilled in groups (here once half the batch is free): the same tokens.
    monkeypatch.setattr(slot_decoder, "REFILL_SHARE", 2)
    assert _greedy(decoder, images, texts, max_batch=4, budgets=budgets) == got
    assert decoder.stats.live_row_steps == kept


def test_the_generator_answers_each_image_in_order(vlm, images, texts, monkeypatch,
                                                   caplog) -> None:
    # A token the first row emits at step 3 for the first time becomes the eos: answers end
    # there, the others run to the budget.
    eos = _reference(vlm, images[:1], texts[:1])[0][0][3]
    monkeypatch.setattr(vlm[1].generation_config, "eos_token_id", [eos])
    expected = _reference(vlm, images[:2], [texts[0], texts[0][:2]])
    assert len(expected[0][0]) == 4 and max(len(row) for row in expected[0]) == MAX_NEW_TOKENS

    generator = RelationGenerator(*vlm, max_batch=2, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    heard = []
    with caplog.at_level(logging.INFO, logger="workers.relations.generator"):
        answers = generator.generate_many(images, [PROMPTS, PROMPTS[:2], []], seed=0,
                                          on_answer=lambda *answer: heard.append(answer))
    # Every answer is told once, as its row ends: the one that met its eos first, while the
    # others still decoded (the task stores each pair as its answers are complete).
    assert sorted(heard) == sorted((i, j, text) for i, group in enumerate(answers)
                                   for j, text in enumerate(group))
    assert heard[0] == (0, 0, answers[0][0])
    # The worker log says how busy the rows were.
    assert f"decoded {len(PROMPTS) + 2} prompts of 3 images" in caplog.text
    assert "occupancy" in caplog.text
    # ...and where the call's time went.
    assert set(generator.decoder.stats.phases) == {"images", "prefixes", "rows", "decode"}
    assert sum(generator.decoder.stats.phases.values()) <= generator.decoder.stats.seconds
    # Each answer is its row of model.generate, decoded without the eos; the count keeps it.
    assert answers == [[vlm[0].decode(row, skip_special_tokens=True).strip() for row in group]
                       for group in expected] + [[]]
    assert generator.generated_tokens == sum(len(row) for group in expected for row in group)
    assert generator.generate(images[0], [], seed=0) == []


def test_the_layout_shrinks_to_the_memory_left(vlm) -> None:
    per_token = kv_bytes_per_token(vlm[1])
    assert slot_shape([10, 10, 10], 512) == (4, 32)  # small images decode together
    assert slot_shape([300], 256) == (1, 256)  # a big image takes the whole batch
    assert slot_shape([3] * 40, 64) == (64, 64)  # rows for 64 prompts, from any image
    assert slot_shape([500, 20], 4096) == (2, 576)  # rows in multiples of 64
    # Room for four image slots and four rows only: rows (and slots with them) are halved.
    room = (4 * 256 + 4 * 512) * per_token
    assert slot_shape([4] * 8, 64, bytes_per_image=256 * per_token,
                      bytes_per_row=512 * per_token, cache_bytes=room) == (4, 4)
    with pytest.raises(MemoryError, match="MAX_NEW_TOKENS"):
        slot_shape([4], 64, bytes_per_image=256 * per_token, bytes_per_row=512 * per_token,
                   cache_bytes=100 * per_token)


def test_evicting_the_model_frees_the_decoder_cache(vlm, images, texts) -> None:
    processor, model = vlm
    decoder = SlotDecoder(processor, model)
    pool = ResidencyPool(torch.device("cpu"), budget_bytes=model_bytes([model]) * 4)
    pool.register("vlm", lambda: {"model": model})
    pool.acquire("vlm")
    budget = pool.room_for_working("vlm") // 2
    pool.set_working_bytes("vlm", budget, release=decoder.release)
    assert pool.resident_bytes == model_bytes([model]) + budget

    _greedy(decoder, images, texts, max_batch=8)
    assert decoder.cache_bytes > 0
    storage = weakref.ref(decoder._storage)
    # Another model that needs the room: the decoder's model goes, and its cache with it.
    other = torch.nn.Linear(4, 4)
    pool.register("other", lambda: {"other": other}, expected_bytes=pool.budget_bytes - 1)
    pool.acquire("other")
    gc.collect()
    assert pool.resident == ["other"] and decoder.cache_bytes == 0 and storage() is None


def test_small_images_share_tasks_and_big_ones_do_not() -> None:
    def item(image: str, prompts: int) -> dict:
        return {"image_id": image, "stage1_top_k": [{}] * prompts}

    items = {f"big|{n}": item("big", 10) for n in range(60)}  # 600 prompts: split, alone
    items |= {f"s{i}|{n}": item(f"s{i}", 10) for i in range(30) for n in range(2)}  # 20 each
    items["mid|0"] = item("mid", 100)  # over 256 / 8 prompts: alone
    tasks = pack_tasks(list(items), items, budget=256)

    def prompts(task):
        return sum(len(items[k]["stage1_top_k"]) for k in task)

    def images(task):
        return {items[k]["image_id"] for k in task}

    assert sorted(k for t in tasks for k in t) == sorted(items)  # every key once
    assert all(prompts(t) <= 256 for t in tasks)
    assert sorted(len(t) for t in tasks if images(t) == {"big"}) == [10, 25, 25]
    assert [t for t in tasks if "mid" in images(t)] == [["mid|0"]]
    shared = [t for t in tasks if images(t) - {"big", "mid"}]
    assert all(images(t) <= {f"s{i}" for i in range(30)} for t in shared)
    assert [len(images(t)) for t in shared] == [12, 12, 6]  # small images packed together
    assert [prompts(t) for t in tasks] == sorted((prompts(t) for t in tasks), reverse=True)


@pytest.mark.parametrize("longest_edge", [None, 16384 * 32 * 32])  # the tiny's and Qwen3-VL's
def test_a_prefix_is_counted_from_the_image_size_as_the_processor_expands_it(vlm, longest_edge) -> None:
    # The decoder sizes its prefix cache from these counts before any image is processed.
    processor = vlm[0]
    if longest_edge:
        processor = copy.deepcopy(processor)
        processor.image_processor.size = {"longest_edge": longest_edge, "shortest_edge": 65536}
    prefix = split_after_image(_render(processor, "where?"))[0]
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


def test_a_processor_that_cannot_count_decodes_the_same(vlm, decoder, images, texts,
                                                        monkeypatch) -> None:
    # Then every image is processed before the cache is sized.
    expected = _greedy(decoder, images, texts, max_batch=4)
    monkeypatch.setattr(type(vlm[0].image_processor), "get_number_of_image_patches", None,
                        raising=False)
    assert prefix_tokens(vlm[0], images[0], split_after_image(texts[0][0])[0]) is None
    assert _greedy(decoder, images, texts, max_batch=4) == expected


def test_the_last_prompts_start_as_soon_as_rows_are_free_for_them(decoder, images, texts,
                                                                  monkeypatch) -> None:
    # Refills wait for a share of the batch to be free, but not when every prompt left fits:
    # here rows are refilled only when the whole batch is free, except at the end.
    monkeypatch.setattr(slot_decoder, "REFILL_SHARE", 1)
    budgets = [[12, 1, 1, 1, 12]]
    got = _greedy(decoder, images[:1], texts[:1], max_batch=4, budgets=budgets)
    assert [len(row) for row in got[0]] == budgets[0]
    # The fifth prompt took a row freed after the first check (8 steps), not after the first
    # prompt's 12 tokens: 8 + 12 steps, not 16 + 12.
    assert decoder.stats.steps == 20
