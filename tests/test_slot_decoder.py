"""The benchmarks' baseline, the slot decoder (bench/slot_decoder.py), on tiny Qwen3-VLs (dense
and Mixture-of-Experts), float32 on the CPU.

Its figures stand beside the paged engine's only while it makes the same tokens: whatever the
layout (image slots, rows), the refills, the ends of rows and their budgets, every row's tokens
must be those of ``model.generate`` on its whole prompt, as the paged engine's are
(tests/test_paged_engine.py).
"""

from __future__ import annotations

import pytest

import bench.slot_decoder as slot_decoder
from bench.slot_decoder import SlotDecoder

# The paged engine's prompts, images and reference, one CPU thread.
from test_decoding import MAX_NEW_TOKENS, one_cpu_thread  # noqa: E402,F401
from test_paged_engine import _reference, images, texts, vlm  # noqa: E402,F401


@pytest.fixture(scope="module")
def decoder(vlm) -> SlotDecoder:
    return SlotDecoder(*vlm)


def _greedy(decoder, images, texts, max_batch: int, budgets=MAX_NEW_TOKENS):
    return decoder.generate(images, texts, max_batch=max_batch, max_new_tokens=budgets,
                            temperature=0.0, seed=0)


@pytest.mark.parametrize("max_batch", [64, 2])
def test_every_row_equals_generate_whatever_the_layout(vlm, decoder, images, texts,
                                                       max_batch) -> None:
    # 64: all three images at once (4 image slots, 16 rows); 2: rows are refilled with
    # prompts of any image and image slots take new images mid-call.
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
    # Token budgets per prompt (the benchmarks' drawn lengths) stand in for eos at chosen
    # steps: every row stops at its own.
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
