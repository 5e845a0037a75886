"""A run's edits exported to a benchmark's scorer layout, then judged as edits made elsewhere
(real Redis, real Celery workers, the tiny editor and judge): the same pairs are scored, the
pair the first run could not edit fails alone naming the file it looked for, no edit is made,
and the report says the editor was external."""

from __future__ import annotations

from benchmark_layouts import write_kris
from conftest import read_json, run_producer
from shared.messages import EDIT_STAGE
from shared.store import RunStore, connect


def scored(report: dict) -> set[tuple[str, str]]:
    return {(name, r["pair_id"]) for name, cat in report["categories"].items() for r in cat["results"]}


def test_exported_edits_judged_as_edits_made_elsewhere_score_the_same_pairs(
        editbench_fleet, fleet_env, redis_client, tmp_path):
    bench = write_kris(tmp_path / "KRIS_Bench")
    # The tiny editor takes one image: temporal_prediction|1, of three frames, fails (and only it).
    proc = run_producer("run", "editbench", "--benchmark", str(bench), "--run", "edited",
                        "--output", str(tmp_path / "edited.json"), env=fleet_env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    edited = read_json(tmp_path / "edited.json")
    assert edited["run"].get("editor") is None and scored(edited) == {
        ("count_change", "1"), ("count_change", "2"), ("temporal_prediction", "2")}

    out = tmp_path / "results" / "tiny"
    proc = run_producer("export", "editbench", "--run", "edited", "--layout", "kris", str(out), env=fleet_env)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one pair has no edit: listed
    assert "3 edits written" in proc.stdout and "temporal_prediction|1: no edit:" in proc.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == [
        "count_change/1.jpg", "count_change/2.jpg", "temporal_prediction/2.jpg"]

    proc = run_producer("run", "editbench", "--benchmark", str(bench), "--edits", str(out), "--run", "judged",
                        "--output", str(tmp_path / "judged.json"), env=fleet_env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    judged = read_json(tmp_path / "judged.json")
    assert scored(judged) == scored(edited)
    assert judged["run"]["editor"] == f"external ({out.resolve()})"
    assert f"editor: external ({out.resolve()})" in proc.stdout
    [failure] = judged["failures"]
    assert (failure["key"], failure["stage"]) == ("temporal_prediction|1", "edit")
    assert f"no edit at {out.resolve() / 'temporal_prediction' / '1.jpg'}" in failure["reason"]
    store = RunStore(connect(fleet_env["EVALFLEET_BROKER_URL"]), "judged")
    assert store.stats(EDIT_STAGE).get("edits_executed", 0) == 0  # nothing was edited
