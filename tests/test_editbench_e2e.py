"""Editbench end to end: real Redis, real Celery workers, the tiny editor and judge."""

from __future__ import annotations

import base64
import io
import json
import shutil
import signal
import statistics
from pathlib import Path

import pytest
from PIL import Image

from config import Settings
from conftest import HeldQueue, private_env, read_json, run_producer, started_fleet, wait_until
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis
from shared.editbench.data import prepare_benchmark
from shared.messages import EDIT_STAGE, SCORE_STAGE
from shared.store import RunStore, connect

# Tiny editor ~1.8 MB, tiny judge ~1.5 MB: this budget holds either, not both.
ONE_MODEL_BUDGET_GB = "0.0025"
CATEGORIES = ["物理", "环境", "社会", "因果", "指代"]


def run_editbench(env, benchmark, tmp_path, *extra: str):
    output = tmp_path / "report.json"
    proc = run_producer("run", "editbench", "--benchmark", str(benchmark), "--output", str(output),
                        *extra, env=env)
    return proc, output


@pytest.fixture
def one_model_env(model_cache, tmp_path):
    """A Redis of the test's own, and a budget that holds one tiny model: the session's
    edit/score worker (which holds both) must not take these runs' tasks."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield private_env(server, model_cache, tmp_path / "work",
                          EVALFLEET_MEMORY_BUDGET_GB=ONE_MODEL_BUDGET_GB)


def one_pair_per_category(benchmark: Path) -> Path:
    """The sample cut to its first pair in each category: the swap count does not need more."""
    categories = json.loads(benchmark.read_text(encoding="utf-8"))
    cut = {name: pairs[:1] for name, pairs in categories.items()}
    benchmark.write_text(json.dumps(cut, ensure_ascii=False), encoding="utf-8")
    return benchmark


def test_sample_run_reports_scores_with_one_swap_and_the_barrier_holds(one_model_env, tmp_path):
    env = one_model_env
    benchmark = write_editbench_sample(tmp_path / "sample")
    with started_fleet(env, ["edit", "score"], tmp_path, name="swap1"):
        proc, output = run_editbench(env, benchmark, tmp_path, "--run", "sample")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)
    store = RunStore(connect(env["EVALFLEET_BROKER_URL"]), "sample")

    # Chinese category names round-trip, in order, each with its three pairs scored.
    assert list(report["categories"]) == CATEGORIES
    scores = store.done(SCORE_STAGE)
    for name, cat in report["categories"].items():
        stored = [scores[f"{name}|{r['pair_id']}"]["score"] for r in cat["results"]]
        assert (cat["pairs"], cat["scored"], cat["failed"]) == (3, 3, 0)
        assert cat["mean"] == statistics.fmean(stored)  # full precision: rounded only where shown
        assert 0 <= cat["min"] <= cat["ci95"][0] <= cat["mean"] <= cat["ci95"][1] <= cat["max"] <= 10
        for result in cat["results"]:
            assert Image.open(result["edited_image"]).format == "PNG"
            assert sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert report["overall"]["n"] == 15 and report["failures"] == []
    assert Image.open(report["chart"]).format == "PNG"
    assert report["run"]["benchmark_shape"] == "category-map"

    # The report is what compare reads: the run against itself ties every pair.
    compared = run_producer("compare", str(output), str(output), "--output", str(tmp_path / "cmp.json"), env=env)
    assert compared.returncode == 0, compared.stderr
    [comparison] = read_json(tmp_path / "cmp.json")["comparisons"]
    overall = comparison["overall"]
    assert (overall["n"], overall["tied"], overall["mean_difference"], overall["ci95"]) == (15, 15, 0.0, [0.0, 0.0])

    # The barrier: no score task started before the last edit finished (worker-side clocks).
    edits = store.done(EDIT_STAGE)
    assert max(e["finished_at"] for e in edits.values()) <= min(s["started_at"] for s in scores.values())
    # One worker process, one swap: editor -> judge. The run's last edit had finished, so the
    # editor was dropped, not copied to (pinned) host memory.
    [swap] = report["swaps"]
    assert swap["from"] == ["editor tiny float32"] and swap["to"] == "vlm tiny float32"
    assert swap["dropped"] == ["editor tiny float32"] and swap["bytes"] > 0
    assert set(report["phases"]) == {"edit", "score"}
    # The tiny judge is dense: no experts to choose an implementation for.
    assert report["run"]["judge_experts"] == ["dense"]
    # What the edits cost, from the workers' records: exact edits, one worker (CPU: no GPU).
    speed = report["edit_speed"]
    assert report["run"]["approximate"] == [] and "step_cache" not in speed
    assert speed["edit_seconds"]["n"] == 15 and speed["gpus"] == 0 and speed["gpu_seconds"]["run"] == 0
    assert 0 < speed["edit_seconds"]["p50"] <= speed["edit_seconds"]["p95"]
    [(worker, times)] = speed["workers"].items()
    assert times["seconds"]["editing"] > 0 and times["seconds"]["scoring"] > 0
    assert times["seconds"]["loading"] > 0  # the editor, then the judge
    assert sum(times["share"].values()) == pytest.approx(1, abs=1e-3)


def test_a_mixture_of_experts_judge_scores_with_grouped_mm_experts(model_cache, tiny_moe_dir, tmp_path):
    """The seed's judge architecture (Qwen3-VL-30B-A3B), tiny: loaded from its directory
    through the product's path with grouped_mm experts, which the report records."""
    benchmark = one_pair_per_category(write_editbench_sample(tmp_path / "sample"))
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, model_cache, tmp_path / "work", EVALFLEET_JUDGE_MODEL=str(tiny_moe_dir))
        with started_fleet(env, ["edit", "score"], tmp_path, name="moe"):
            proc, output = run_editbench(env, benchmark, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)
    assert report["run"]["judge_model"] == str(tiny_moe_dir)
    assert report["run"]["judge_experts"] == ["grouped_mm"]
    assert report["overall"]["n"] == 5 and report["failures"] == []
    for cat in report["categories"].values():
        [result] = cat["results"]
        assert 0 <= result["score"] <= 10
        assert sum(result["probabilities"].values()) == pytest.approx(1, abs=1e-4)


def test_no_swap_when_the_budget_holds_both(editbench_fleet, fleet_env, redis_client, tmp_path):
    # The session's worker runs on the default budget, which holds both tiny models.
    benchmark = write_editbench_sample(tmp_path / "sample")
    proc, output = run_editbench(fleet_env, benchmark, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)
    assert report["overall"]["n"] == 15
    assert report["swaps"] == []


def test_category_scope_swaps_like_the_seed_design(one_model_env, tmp_path):
    env = one_model_env
    benchmark = one_pair_per_category(write_editbench_sample(tmp_path / "sample"))
    with started_fleet(env, ["edit", "score"], tmp_path, name="swap9"):
        proc, output = run_editbench(env, benchmark, tmp_path, "--phase-scope", "category")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)
    # Judge in once per category, editor back in for every category after the first: 9 swaps.
    # The editor comes back after each category but the last: it is dropped only then.
    assert [swap["dropped"] for swap in report["swaps"]] == [[]] * 8 + [["editor tiny float32"]]
    assert report["phases"]["edit"]["spans"] == 5


def test_interrupted_after_edit_phase_rerun_redoes_no_edit(editbench_fleet, fleet_env, redis_client,
                                                           tmp_path):
    benchmark = write_editbench_sample(tmp_path / "sample")
    args = ("run", "editbench", "--benchmark", str(benchmark), "--run", "interrupted")
    # The interrupted run's score tasks wait in a queue no worker takes: the signal lands in its
    # score phase, however fast the judge is.
    held = HeldQueue(fleet_env["EVALFLEET_BROKER_URL"], "score", "score-held-interrupted")
    controller = run_producer(*args, env={**fleet_env, **held.env}, wait=False)
    store = RunStore(redis_client, "interrupted")
    pairs = len(prepare_benchmark(benchmark).pairs)

    def scores_sent() -> bool:
        assert controller.poll() is None, "the run ended before its score phase"
        return sum(len(keys) for keys in held.waiting()) == pairs

    wait_until(scores_sent, 120, "the edit phase drained and every score task sent")
    assert store.progress(EDIT_STAGE).done == pairs
    controller.send_signal(signal.SIGINT)
    out, _ = controller.communicate(timeout=60)
    assert controller.returncode == 130, out
    edits_before = store.stats(EDIT_STAGE)["edits_executed"]
    assert edits_before == pairs

    rerun = run_producer(*args, env=fleet_env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert store.stats(EDIT_STAGE)["edits_executed"] == edits_before
    assert store.progress(SCORE_STAGE).done == pairs


def _png_b64(size: tuple[int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "red").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_corrupt_and_uneditable_images_fail_alone(editbench_fleet, fleet_env, redis_client, tmp_path):
    benchmark = write_editbench_sample(tmp_path / "sample")
    data = json.loads(benchmark.read_text(encoding="utf-8"))
    data["物理"][0]["original_image_b64"] = "not//base64!!"
    # A valid image no editor takes (aspect ratio beyond 16:1): refused when the benchmark is
    # read, naming the record and the field, so it is never sent to an editor.
    data["社会"][1]["original_image_b64"] = _png_b64((4000, 1))
    benchmark.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    proc, output = run_editbench(fleet_env, benchmark, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = read_json(output)
    failures = {f["pair_id"]: f for f in report["failures"]}
    corrupt = failures["物理-1#0"]
    assert corrupt["stage"] == "edit" and "original_image_b64" in corrupt["reason"]
    assert "base64" in corrupt["reason"] and str(benchmark) in corrupt["reason"]
    refused = failures["社会-2#1"]
    assert refused["stage"] == "edit" and "4000x1 pixels" in refused["reason"]
    assert "original_image_b64" in refused["reason"] and "record 社会[1]" in refused["reason"]
    assert report["overall"]["n"] == 13
    assert report["categories"]["物理"]["scored"] == 2 and report["categories"]["社会"]["scored"] == 2


def test_a_judge_batch_that_fails_is_narrowed_to_the_pairs_that_caused_it(model_cache, tmp_path):
    """A prompt template that breaks the judge for one category (a special token in it):
    its pairs fail, each with its reason; the pairs that shared their batches are scored."""
    prompts = tmp_path / "prompts"
    shutil.copytree(Settings().prompts, prompts)
    (prompts / "环境.user.txt").write_text("<|image_pad|> {original_description} / {edit_instruction}",
                                          encoding="utf-8")
    benchmark = write_editbench_sample(tmp_path / "sample")
    per_category = {name: len(pairs) for name, pairs in json.loads(benchmark.read_text()).items()}
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, model_cache, tmp_path / "work", EVALFLEET_PROMPTS_DIR=str(prompts),
                          EVALFLEET_JUDGE_BATCH_SIZE="4")
        with started_fleet(env, ["edit", "score"], tmp_path, name="narrow"):
            proc, output = run_editbench(env, benchmark, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = read_json(output)
    failed = {(f["category"], f["stage"]) for f in report["failures"]}
    assert failed == {("环境", "score")}
    assert len(report["failures"]) == per_category["环境"]
    # 4-pair batches in category order: the failing pairs shared batches with others.
    assert report["overall"]["n"] == sum(per_category.values()) - per_category["环境"]


def test_a_rubric_of_several_criteria_reports_each(editbench_fleet, fleet_env, redis_client, tmp_path):
    benchmark = one_pair_per_category(write_editbench_sample(tmp_path / "sample"))
    proc, output = run_editbench(fleet_env, benchmark, tmp_path, "--rubric", "viescore")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)
    assert report["rubric"]["criteria"] == ["SC", "PQ"] and report["rubric"]["overall"] == "viescore"
    assert report["run"]["judge_rubric"] == "viescore" and report["scoring"] == {"logits": 10}
    for cat in report["categories"].values():
        [result] = cat["results"]
        sc, pq = result["criteria"]["SC"]["score"], result["criteria"]["PQ"]["score"]
        assert result["score"] == pytest.approx((sc * pq) ** 0.5)
        assert sum(result["criteria"]["PQ"]["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert {k: cat["criteria"]["SC"][k] for k in ("n", "mean", "std", "failed")} == {
            "n": 1, "mean": sc, "std": 0.0, "failed": 0}
    sc_all = [c["results"][0]["criteria"]["SC"]["score"] for c in report["categories"].values()]
    assert report["criteria"]["SC"]["mean"] == pytest.approx(statistics.fmean(sc_all), abs=1e-4)
    assert Image.open(report["chart"]).format == "PNG"
    assert "SC: n=5" in proc.stdout


def test_reasoning_mode_fails_pairs_whose_answer_states_no_score(editbench_fleet, fleet_env, redis_client,
                                                                 tmp_path):
    benchmark = one_pair_per_category(write_editbench_sample(tmp_path / "sample"))
    env = {**fleet_env, "EVALFLEET_JUDGE_MODE": "reasoning", "EVALFLEET_JUDGE_REASONING_TOKENS": "8"}
    proc, output = run_editbench(env, benchmark, tmp_path)
    # The tiny random judge writes no "Score: N": each pair fails with its answer, none scores 0.
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = read_json(output)
    assert report["overall"]["n"] == 0 and len(report["failures"]) == 5
    for failure in report["failures"]:
        assert failure["stage"] == "score" and failure["attempts"] == 1
        assert failure["reason"].startswith("criterion score: the judge's answer states no score from 0 to 10")
    assert report["criteria"]["score"] == {"n": 0, "mean": None, "std": None, "ci95": None, "failed": 5}
    assert report["rubric"]["mode"] == "reasoning"


def test_criteria_and_weights_per_category_reach_the_workers(editbench_fleet, fleet_env, redis_client, tmp_path):
    prompts = tmp_path / "prompts"
    shutil.copytree(Settings().prompts, prompts)
    folder = prompts / "rubrics" / "per_category"
    for criterion in ("a", "b"):
        (folder / criterion).mkdir(parents=True)
        (folder / criterion / "default.system.txt").write_text(f"Judge {criterion} of the edit.")
        (folder / criterion / "default.user.txt").write_text("{edit_instruction}\nAnswer with an integer from 0 to 10.")
    (folder / "rubric.json").write_text(json.dumps({
        "scale": {"min": 0, "max": 10},
        "criteria": [{"name": "a"}, {"name": "b", "weight": {"*": 1, "物理": 3}, "categories": ["物理"]}]}))
    benchmark = one_pair_per_category(write_editbench_sample(tmp_path / "sample"))
    proc, output = run_editbench({**fleet_env, "EVALFLEET_PROMPTS_DIR": str(prompts)}, benchmark, tmp_path,
                                 "--rubric", "per_category")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = read_json(output)
    for name, cat in report["categories"].items():
        [result] = cat["results"]
        a = result["criteria"]["a"]["score"]
        if name == "物理":  # b is asked here only, weighted 3
            assert result["score"] == pytest.approx((a + 3 * result["criteria"]["b"]["score"]) / 4)
        else:
            assert set(result["criteria"]) == {"a"} and result["score"] == pytest.approx(a)
    assert report["criteria"]["b"]["n"] == 1 and report["criteria"]["b"]["failed"] == 0
    assert report["scoring"] == {"logits": 6} and report["protocol"]["scoring"] == "expectation"
