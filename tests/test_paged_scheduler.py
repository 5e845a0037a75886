"""The paged engine's scheduler alone, without a model: the plans it makes for given pools.

Tokens are handed back as a model would (one per chunk that ends a row's known tokens), so
rows grow, end and give back their blocks as they do in a real call.
"""

from __future__ import annotations

import pytest

from workers.relations.engine.kv_cache import BlockPool
from workers.relations.engine.scheduler import Prefix, Row, Scheduler, StepPlan

TOKEN, EOS = 7, 2


def rows(image: int, *shapes: tuple[int, int]) -> list[Row]:
    """Rows of ``image`` with (suffix length, token budget) each."""
    return [Row(image=image, index=i, suffix=[100 + i] * suffix, max_new_tokens=budget)
            for i, (suffix, budget) in enumerate(shapes)]


def scheduler(all_rows: list[Row], prefixes: dict[int, int], blocks: int, *, block_size: int = 4,
              max_rows: int = 64, step_tokens: int = 64) -> Scheduler:
    return Scheduler(all_rows, prefixes, BlockPool(blocks, block_size), max_rows=max_rows,
                     step_tokens=step_tokens, eos={EOS})


def step(s: Scheduler, tokens=None) -> tuple[StepPlan, list[Row]]:
    plan = s.schedule()
    picked = [TOKEN] * len(plan.sampling) if tokens is None else tokens(plan)
    return plan, s.postprocess(plan, picked)


def chunks(plan: StepPlan) -> list[tuple[str, int, int]]:
    """Each chunk as (what, start, count): ``p0`` image 0's prefix, ``r1`` row 1."""
    return [(f"p{c.sequence.image}" if isinstance(c.sequence, Prefix) else f"r{c.sequence.index}",
             c.start, c.count) for c in plan.chunks]


def run_to_end(s: Scheduler, limit: int = 500) -> list[StepPlan]:
    plans = []
    while not s.finished:
        plans.append(step(s)[0])
        assert len(plans) < limit
    return plans


def test_rows_start_while_blocks_last_and_wait_for_the_blocks_rows_give_back() -> None:
    # Blocks of 4 tokens: the prefix takes 2, each row's 4-token suffix 1: 3 of 4 rows fit.
    s = scheduler(rows(0, *[(4, 1)] * 4), {0: 8}, blocks=5)
    plan, _ = step(s)
    assert chunks(plan) == [("p0", 0, 8)]  # rows wait for their prefix to be in the cache
    plan, ended = step(s)
    assert chunks(plan) == [("r0", 0, 4), ("r1", 0, 4), ("r2", 0, 4)]
    assert [row.index for row in ended] == [0, 1, 2]  # a budget of one token
    assert s.blocks.free_blocks == 3
    plan, ended = step(s)
    assert chunks(plan) == [("r3", 0, 4)] and s.finished
    assert s.blocks.free_blocks == 5  # the image's prefix went with its last row


def test_when_blocks_run_out_the_latest_row_is_preempted_and_recomputed_later() -> None:
    # A 4-token prefix (1 block); three rows of 2 suffix tokens and 6 new: 2 blocks each at
    # most. 5 blocks: the rows start with one each, and the second block is one too few.
    all_rows = rows(0, (2, 6), (2, 6), (2, 6))
    s = scheduler(all_rows, {0: 4}, blocks=5)
    step(s)
    plan, _ = step(s)
    assert [c[0] for c in chunks(plan)] == ["r0", "r1", "r2"]
    step(s)  # tokens at columns 2 and 3: the first block still
    step(s)
    plan, _ = step(s)  # column 4: a second block each; one is free
    assert chunks(plan) == [("r0", 4, 1), ("r1", 4, 1)]
    [preempted] = plan.preempted
    assert preempted.index == 2 and preempted.computed == 0 and len(preempted.output) == 3
    assert [row.index for row in s.waiting] == [2]
    # It starts again once a row ends, its suffix and the tokens it had made recomputed in
    # one chunk, and goes on to its whole budget.
    plans = run_to_end(s)
    restart = next(p for p in plans if any(c[0] == "r2" for c in chunks(p)))
    assert ("r2", 0, 5) in chunks(restart)
    assert [len(row.output) for row in all_rows] == [6, 6, 6]
    assert s.preemptions == 1 and s.blocks.free_blocks == 5


def test_prefills_are_cut_to_the_step_budget_and_ride_with_the_decodes() -> None:
    s = scheduler(rows(0, (4, 3), (4, 3)), {0: 12}, blocks=20, step_tokens=5)
    assert [chunks(step(s)[0]) for _ in range(3)] == [[("p0", 0, 5)], [("p0", 5, 5)], [("p0", 10, 2)]]
    plan, _ = step(s)
    assert chunks(plan) == [("r0", 0, 4), ("r1", 0, 1)]
    assert [c.sequence.index for c in plan.sampling] == [0]  # row 1's suffix is not all in yet
    plan, _ = step(s)
    # Row 0's next token and the rest of row 1's suffix: one forward.
    assert chunks(plan) == [("r0", 4, 1), ("r1", 1, 3)]
    assert [c.sequence.index for c in plan.sampling] == [0, 1]
    run_to_end(s)


def test_rows_that_end_are_refilled_from_the_waiting_prompts_in_order() -> None:
    all_rows = rows(0, (3, 2), (3, 5), (3, 1), (3, 3)) + rows(1, (2, 2), (2, 4))
    s = scheduler(all_rows, {0: 6, 1: 5}, blocks=64, max_rows=2)
    plans = run_to_end(s)
    running = [{c.sequence.image * 10 + c.sequence.index for c in p.chunks
                if isinstance(c.sequence, Row)} for p in plans]
    assert max(len(r) for r in running) == 2
    starts = [c.sequence.image * 10 + c.sequence.index for p in plans for c in p.chunks
              if isinstance(c.sequence, Row) and c.start == 0]
    assert starts == [0, 1, 2, 3, 10, 11]
    assert [len(row.output) for row in all_rows] == [row.max_new_tokens for row in all_rows]
    # Image 1 was loaded once image 0's prompts no longer filled the rows; all blocks are back.
    first_of_1 = next(i for i, p in enumerate(plans) if ("p1", 0, 5) in chunks(p))
    assert any(("r3", 0, 3) in chunks(p) for p in plans[:first_of_1 + 1])
    assert s.blocks.free_blocks == 64


def test_an_eos_ends_a_row_before_its_budget() -> None:
    s = scheduler(rows(0, (3, 10), (3, 10)), {0: 4}, blocks=16)
    step(s)
    _, ended = step(s, lambda plan: [EOS, TOKEN])
    assert [row.output for row in ended] == [[EOS]]
    assert [row.index for row in s.running] == [1]


def test_small_images_load_together_while_rows_would_idle() -> None:
    s = scheduler(rows(0, (2, 1), (2, 1)) + rows(1, (2, 1)) + rows(2, (2, 1)), {0: 4, 1: 4, 2: 4},
                  blocks=64, max_rows=3)
    assert chunks(step(s)[0]) == [("p0", 0, 4), ("p1", 0, 4)]  # 2 + 1 prompts fill 3 rows
    plan, ended = step(s)
    assert [(c.sequence.image, c.sequence.index) for c in plan.chunks] == [(0, 0), (0, 1), (1, 0)]
    assert len(ended) == 3 and list(s.loaded) == []  # image 2 waited for free rows
    assert chunks(step(s)[0]) == [("p2", 0, 4)]
    assert chunks(step(s)[0]) == [("r0", 0, 2)] and s.finished


def test_a_pool_too_small_for_one_prefix_and_one_row_is_refused() -> None:
    with pytest.raises(MemoryError, match="MAX_NEW_TOKENS"):
        scheduler(rows(0, (4, 40)), {0: 40}, blocks=12)


def _answer(row: Row, position: int) -> int:
    """A stand-in model: each row's token at each position, eos at some."""
    if (row.index * 5 + position) % 11 == 10:
        return EOS
    return 10 + (row.index * 7 + position) % 50


def _picked(plan: StepPlan) -> list[int]:
    # The position a row samples at is its output's length when the step is planned
    # (PENDING tokens of a step still running count).
    return [_answer(chunk.sequence, len(chunk.sequence.output)) for chunk in plan.sampling]


@pytest.mark.parametrize("blocks", [200, 9])  # room for all, or rows preempted
def test_planning_each_step_before_the_last_ones_tokens_gives_the_same_outputs(blocks) -> None:
    shapes = [(3 + i % 4, 4 + (i * 3) % 9) for i in range(10)]
    ended_in_turn = []
    done = scheduler(rows(0, *shapes[:6]) + rows(1, *shapes[6:]), {0: 5, 1: 3}, blocks=200,
                     max_rows=4, step_tokens=8)
    while not done.finished:
        plan = done.schedule()
        ended_in_turn += done.postprocess(plan, _picked(plan))
    ahead = scheduler(rows(0, *shapes[:6]) + rows(1, *shapes[6:]), {0: 5, 1: 3}, blocks=blocks,
                      max_rows=4, step_tokens=8)
    ended_ahead, launched = [], None
    while not ahead.finished or launched:
        upcoming = None
        if not ahead.finished:
            plan = ahead.schedule()
            upcoming = (plan, _picked(plan))
            ahead.expect(plan)
        if launched:
            ended_ahead += ahead.resolve(*launched)
        launched = upcoming
    assert [(r.image, r.index, r.output) for r in sorted(ended_ahead, key=_key)] == \
        [(r.image, r.index, r.output) for r in sorted(ended_in_turn, key=_key)]
    assert any(row.output[-1] == EOS for row in ended_ahead)  # some rows end at an eos
    assert all(len(row.output) <= row.max_new_tokens for row in ended_ahead)
    assert ahead.blocks.free_blocks == blocks and len(ended_ahead) == 10
    if blocks == 9:
        assert ahead.preemptions > 0


def _key(row: Row) -> tuple[int, int]:
    return row.image, row.index
