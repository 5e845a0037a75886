"""Progress in the unit the user thinks in: pairs as they end within a task, with a rate and an
ETA over a recent window, never since the start.

The estimator is fed explicit times (no clock); the task's results are fed answers in the
order a decoder may end them (a state, not a race).
"""

from __future__ import annotations

from producer.progress import StageSpeed
from producer.rate import RATE_WINDOW_SECONDS, rate_and_eta
from shared.messages import RELATIONS_STAGE
from shared.store import Progress, RunStore


def test_the_rate_reads_the_recent_window_only():
    now = 10_000.0
    # Slow for the first 9,000 s (100 pairs), then 60 pairs in the last 300 s.
    samples = [[now, 160, 0], [now - 300, 100, 0], [now - RATE_WINDOW_SECONDS - 1, 90, 0], [0.0, 0, 0]]
    got = rate_and_eta(samples, remaining=24, now=now)
    assert got == {"rate_per_min": 12.0, "eta_seconds": 120.0, "last_progress_ago": 0.0}


def test_a_resumed_runs_earlier_pairs_do_not_count_in_its_rate():
    # 800 of 2,000 pairs were done before the resume; 20 more in the 72 s since.
    speed = StageSpeed(Progress(done=800, failed=0, total=2000), now=0.0)
    assert speed.describe(Progress(done=800, failed=0, total=2000), now=5.0) == (
        "failed 0, - pairs/min, ETA -")
    text = speed.describe(Progress(done=818, failed=2, total=2000), now=72.0)
    assert text == "failed 2, 16.7 pairs/min, ETA 1:10:48"


def test_the_bar_rate_forgets_what_is_older_than_the_window():
    speed = StageSpeed(Progress(done=0, failed=0, total=1000), now=0.0)
    speed.describe(Progress(done=600, failed=0, total=1000), now=60.0)  # a fast start
    speed.describe(Progress(done=610, failed=0, total=1000), now=1000.0)
    # The window holds the samples of 1000 s and 1540 s: 10 pairs in 540 s; the fast start
    # is out of it.
    text = speed.describe(Progress(done=620, failed=0, total=1000), now=1000.0 + RATE_WINDOW_SECONDS - 60)
    assert text == "failed 0, 1.1 pairs/min, ETA 5:42:00"


def pair(image_id: str, subject: str, predicates: list[str]) -> dict:
    top_k = [{"predicate": p, "similarity": 0.5} for p in predicates]
    return {"image_id": image_id, "subject": subject, "object": "table", "stage1_top_k": top_k,
            "has_gt": False, "gt_predicates": []}


def test_a_pair_is_stored_as_soon_as_its_last_description_ends(redis_client):
    """A task of three pairs over two images: each pair is done when its own answers are, in
    whatever order the decoder ends its rows, before the task ends."""
    from workers.tasks.relations import PairResults

    store = RunStore(redis_client, "streamed")
    pending = {"cup": pair("1", "cup", ["on", "near"]), "box": pair("1", "box", ["under"]),
               "dog": pair("2", "dog", ["beside", "behind"])}
    store.add_items(RELATIONS_STAGE, pending)
    jobs = [[(key, entry, f"prompt {entry['predicate']}") for key in ("cup", "box")
             for entry in pending[key]["stage1_top_k"]],
            [("dog", entry, f"prompt {entry['predicate']}") for entry in pending["dog"]["stage1_top_k"]]]
    results = PairResults(store, pending, jobs)

    def done() -> list[str]:
        return sorted(store.done_keys(RELATIONS_STAGE))

    results.answer(0, 1, "cup near table")  # the cup's second predicate ends first
    results.answer(1, 0, "dog beside table")
    assert done() == []
    results.answer(0, 2, "box under table")
    assert done() == ["box"] and store.progress(RELATIONS_STAGE).done == 1
    results.answer(0, 0, "cup on table")
    assert done() == ["box", "cup"]
    # The descriptions keep the order of the pair's top-K predicates, not the order they ended in.
    [cup] = store.get_done(RELATIONS_STAGE, ["cup"])
    assert [d["generated_description"] for d in cup["stage2_generated"]] == ["cup on table", "cup near table"]
    assert store.stats(RELATIONS_STAGE)["descriptions_generated"] == 3
    results.answer(1, 1, "dog behind table")
    assert done() == ["box", "cup", "dog"] and results.descriptions == 5
    # Progress was sampled as pairs ended, within the task: status has a rate before it ends.
    assert store.progress_samples(RELATIONS_STAGE)[0][1] >= 1
