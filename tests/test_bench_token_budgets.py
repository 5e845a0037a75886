"""EVALFLEET_BENCH_TOKEN_BUDGETS, the benchmarks' drawn lengths: off unless set, refused when
malformed, the same budget for a prompt whatever carries it, and a run made with it says so."""

from __future__ import annotations

import statistics

import pytest

from config import Settings, SettingsError, load_settings
from config.bench_token_budgets import parse_token_budgets
from conftest import read_json, run_producer
from producer.relations.enqueue import run_settings
from shared.keys import relation_key
from shared.relations.data import prepare_data_for_inference
from shared.relations.prompt import build_relation_prompt

REALRUN = "lognormal:median=140,sigma=0.6,cap=512,seed=0"


@pytest.mark.parametrize("value, wrong", [
    ("normal:median=140,sigma=0.6,cap=512,seed=0", "give lognormal:median=M"),
    ("lognormal", "give lognormal:median=M"),
    ("lognormal:median=140,sigma=0.6,cap=512", "seed missing"),
    ("lognormal:median=140,sigma=0.6,cap=512,seed=0,mean=3", "'mean=3' is none of"),
    ("lognormal:median=140,sigma=0.6,cap=512,seed=0,seed=1", "seed is given twice"),
    ("lognormal:median=abc,sigma=0.6,cap=512,seed=0", "must be numbers"),
    ("lognormal:median=140,sigma=0.6,cap=51.2,seed=0", "whole numbers"),
    ("lognormal:median=0,sigma=0.6,cap=512,seed=0", "median=0"),
    ("lognormal:median=nan,sigma=0.6,cap=512,seed=0", "median=nan"),
    ("lognormal:median=140,sigma=-1,cap=512,seed=0", "sigma=-1"),
    ("lognormal:median=140,sigma=0.6,cap=0,seed=0", "cap=0"),
    ("lognormal:median=140,sigma=0.6,cap=512,seed=-1", "seed=-1"),
])
def test_a_malformed_value_is_refused_naming_the_setting_and_what_is_wrong(value, wrong):
    with pytest.raises(SettingsError) as refused:
        load_settings({"EVALFLEET_BENCH_TOKEN_BUDGETS": value})
    assert "EVALFLEET_BENCH_TOKEN_BUDGETS" in str(refused.value) and "benchmarks only" in str(refused.value)
    assert wrong in str(refused.value)


def test_it_is_off_by_default_and_a_real_run_records_nothing_of_it():
    assert Settings().token_budgets is None and load_settings({}).token_budgets is None
    assert "bench_token_budgets" not in run_settings(Settings()).record()


def test_one_spelling_is_recorded_and_makes_another_run_than_without_it():
    spaced = Settings(bench_token_budgets=" lognormal: seed=0, cap=512, sigma=0.60, median=140.0 ")
    assert run_settings(spaced).bench_token_budgets == REALRUN
    assert run_settings(spaced).identity() == run_settings(Settings(bench_token_budgets=REALRUN)).identity()
    assert run_settings(spaced).identity() != run_settings(Settings()).identity()


def test_the_endpoint_backend_refuses_it():
    endpoint = {"EVALFLEET_RELATIONS_BACKEND": "endpoint", "EVALFLEET_RELATIONS_ENDPOINT_URL": "http://h:8000/v1",
                "EVALFLEET_RELATIONS_ENDPOINT_MODEL": "m"}
    load_settings(endpoint)
    with pytest.raises(SettingsError, match="EVALFLEET_BENCH_TOKEN_BUDGETS.*RELATIONS_BACKEND=local"):
        load_settings({**endpoint, "EVALFLEET_BENCH_TOKEN_BUDGETS": REALRUN})


def test_the_draws_follow_the_named_distribution_within_the_caps():
    budgets = parse_token_budgets(REALRUN)
    draws = [budgets.budget(f"image-{i}|a|b", f"pred{k}", 512) for i in range(500) for k in range(10)]
    assert 130 <= statistics.median(draws) <= 150 and 155 <= statistics.mean(draws) <= 180
    assert min(draws) >= 1 and max(draws) == 512  # the cap is reached, never passed
    assert max(budgets.budget(f"image-{i}|a|b", "on", 100) for i in range(200)) == 100  # the run's max_new_tokens
    fixed = parse_token_budgets("lognormal:median=64,sigma=0,cap=512,seed=0")
    assert {fixed.budget(f"k{i}", "on", 512) for i in range(50)} == {64}
    other_seed = parse_token_budgets(REALRUN.replace("seed=0", "seed=1"))
    assert [other_seed.budget(f"k{i}", "on", 512) for i in range(50)] != \
           [budgets.budget(f"k{i}", "on", 512) for i in range(50)]


def test_a_prompt_gets_the_same_budget_whatever_task_carries_it(sample):
    from workers.tasks.relations import prompt_budgets

    run = run_settings(Settings(bench_token_budgets=REALRUN))
    pairs = prepare_data_for_inference(*sample, 10).pairs

    def jobs(group: list[dict]) -> list[list[tuple]]:
        return [[(relation_key(p["image_id"], p["subject"], p["object"]), entry, "")
                 for p in group for entry in p["stage1_top_k"]]]

    def budget_of(tasks: list[list[dict]]) -> dict[tuple[str, str], int]:
        found = {}
        for task in tasks:
            [task_jobs] = jobs(task)
            [budgets] = prompt_budgets(run, "split", [task_jobs])
            found.update({(key, entry["predicate"]): b for (key, entry, _), b in zip(task_jobs, budgets)})
        return found

    one_task = budget_of([pairs])
    assert budget_of([[pair] for pair in reversed(pairs)]) == one_task
    assert budget_of([pairs[1::2], pairs[::2]]) == one_task
    assert len(set(one_task.values())) > 1
    assert prompt_budgets(run_settings(Settings()), "real", jobs(pairs)) is None


def test_a_run_with_it_ends_each_description_at_its_budget_and_says_so(fleet, fleet_env, redis_client, sample,
                                                                         vlm, tmp_path):
    spec = "lognormal:median=6,sigma=0.8,cap=40,seed=3"
    max_new_tokens = 12
    output = tmp_path / "report.json"
    proc = run_producer("run", "relations", "--stage1", str(sample[0]), "--input", str(sample[1]),
                        "--output", str(output),
                        env={**fleet_env, "EVALFLEET_BENCH_TOKEN_BUDGETS": spec, "EVALFLEET_TEMPERATURE": "0",
                             "EVALFLEET_MAX_NEW_TOKENS": str(max_new_tokens)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = proc.stdout + proc.stderr
    assert "benchmarks only" in said and "benchmark-shaped: lengths drawn from" in said
    report = read_json(output)
    assert report["summary"]["bench_token_budgets"] == spec and report["failed"] == []
    got = {(relation_key(r["image_id"], r["subject"], r["object"]), g["predicate"]): g["generated_description"]
           for r in report["results"] for g in r["stage2_generated"]}
    # Greedy, so a description cut at its budget is the first tokens of the full-length answer.
    budgets = parse_token_budgets(spec)
    full = full_length_tokens(vlm, sample, max_new_tokens)
    assert got.keys() == full.keys()
    drawn = {prompt: budgets.budget(*prompt, max_new_tokens) for prompt in full}
    expected = {prompt: vlm[0].decode(tokens[:drawn[prompt]], skip_special_tokens=True).strip()
                for prompt, tokens in full.items()}
    assert got == expected
    assert min(drawn.values()) < max_new_tokens and max(drawn.values()) == max_new_tokens
    assert any(len(tokens) > drawn[prompt] for prompt, tokens in full.items())  # some were cut


def full_length_tokens(vlm, sample, max_new_tokens: int) -> dict[tuple[str, str], list[int]]:
    """Each prompt's greedy tokens up to ``max_new_tokens`` (to its eos), in this process."""
    from workers.images import open_location
    from workers.relations.generator import render_prompt, shared_decoder

    processor, model = vlm
    by_image: dict[str, list[dict]] = {}
    for pair in prepare_data_for_inference(*sample, 10).pairs:
        by_image.setdefault(pair["image_path"], []).append(pair)
    images, texts, prompts = [], [], []
    for path, pairs in by_image.items():
        image = open_location(path)
        images.append(image)
        texts.append([render_prompt(processor, build_relation_prompt(
            p["subject_obj"], p["object_obj"], entry["predicate"], image.width, image.height))
            for p in pairs for entry in p["stage1_top_k"]])
        prompts.append([(relation_key(p["image_id"], p["subject"], p["object"]), entry["predicate"])
                        for p in pairs for entry in p["stage1_top_k"]])
    tokens = shared_decoder(processor, model).generate(images, texts, max_batch=64, max_new_tokens=max_new_tokens,
                                                        temperature=0.0, seed=0)
    return {prompt: row for group, rows in zip(prompts, tokens) for prompt, row in zip(group, rows)}
