"""Operational failures a user must be able to read: a model that cannot be found.

A model path that cannot exist stops the producer at its start (tests/test_never_silent.py);
a hub id can only be tried by the workers, which fail its items at once, naming the setting.
"""

from __future__ import annotations

import time

import pytest
import torch

from conftest import read_json, relations_counts, run_producer, started_fleet
from producer.embedded import EmbeddedRedis
from shared.store import RunStore, connect
from workers.models.loading import ModelNotFoundError, load_vlm

MISSING = "/nonexistent/dir"
# A well-formed hub id that no cache holds: with HF_HUB_OFFLINE=1 the workers cannot load it.
MISSING_HUB_ID = "evalfleet-tests/no-such-model"


def test_a_missing_model_fails_the_pairs_at_once_naming_the_setting(fleet_env, sample, tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = {**fleet_env, "EVALFLEET_BROKER_URL": server.url, "HF_HUB_OFFLINE": "1",
               "EVALFLEET_TASK_MAX_RETRIES": "3", "EVALFLEET_RETRY_BACKOFF_SECONDS": "30"}
        stage1, input_path = sample
        output = tmp_path / "out.json"
        with started_fleet(env, ["relations"], tmp_path, name="nomodel"):
            started = time.monotonic()
            proc = run_producer("run", "relations", "--stage1", str(stage1), "--input",
                                str(input_path), "--run", "missing", "--output", str(output),
                                env={**env, "EVALFLEET_RELATIONS_MODEL": MISSING_HUB_ID}, timeout=120)
            elapsed = time.monotonic() - started
        assert proc.returncode == 1, proc.stdout + proc.stderr
        # A 30 s back-off before each of 3 retries would take minutes: nothing was retried.
        assert elapsed < 60
        report = read_json(output)
        assert len(report["failed"]) == relations_counts(stage1, input_path)[0]
        assert report["results"] == []
        for failure in report["failed"]:
            assert "EVALFLEET_RELATIONS_MODEL" in failure["reason"] and MISSING_HUB_ID in failure["reason"]
            assert "Traceback" not in failure["reason"]
        failed = RunStore(connect(server.url), "missing").failed("relations")
        assert {f["attempts"] for f in failed.values()} == {1}
        assert "EVALFLEET_RELATIONS_MODEL" in proc.stdout


@pytest.mark.parametrize("setting", ["EVALFLEET_JUDGE_MODEL", "EVALFLEET_RELATIONS_MODEL"])
def test_load_vlm_names_the_setting_that_chose_the_model(setting):
    with pytest.raises(ModelNotFoundError) as err:
        load_vlm(MISSING, revision="", dtype=torch.float32, device=torch.device("cpu"), setting=setting)
    message = str(err.value)
    assert setting in message and MISSING in message and "no such directory" in message
