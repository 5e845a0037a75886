"""The command line: each job's own flags, exit codes, one-line messages, no password printed."""

from __future__ import annotations

import pytest

from config import Settings, ignored_variables
from conftest import private_env, run_producer
from producer.editbench.register import register_editbench
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis, free_port
from shared.store import RunStore, connect

PASSWORD = "Pw-that-must-never-show-7f3a"

EXIT_USAGE, EXIT_INFRA, EXIT_CRASH = 2, 3, 4


@pytest.fixture
def server(tmp_path):
    """A Redis with a password, of this test's own."""
    with EmbeddedRedis(tmp_path / "redis", password=PASSWORD) as running:
        yield running


@pytest.fixture
def env(server, model_cache, tmp_path) -> dict[str, str]:
    return private_env(server, model_cache, tmp_path / "work")


def output_of(proc) -> str:
    return proc.stdout + proc.stderr


def assert_no_password(proc, tmp_path) -> None:
    assert PASSWORD not in output_of(proc)
    for log in (tmp_path / "work" / "logs").glob("*.log"):
        assert PASSWORD not in log.read_text(), log


@pytest.mark.parametrize("args", [
    ("run", "editbench", "--top-k", "3"),
    ("run", "editbench", "--stage1", "s.json", "--input", "i.json"),
    ("run", "relations", "--benchmark", "bench.json"),
    ("run", "relations", "--phase-scope", "category"),
    ("enqueue", "relations", "--phase-scope", "run"),
])
def test_a_flag_of_the_other_job_is_a_usage_error(env, args, tmp_path):
    proc = run_producer(*args, env=env)
    assert proc.returncode == EXIT_USAGE
    assert "unrecognized arguments" in proc.stderr and args[2] in proc.stderr


def test_report_of_an_unknown_run_is_a_clear_message_without_the_password(env, tmp_path):
    proc = run_producer("report", "relations", "--run", "nope", env=env)
    assert proc.returncode == EXIT_USAGE
    assert "run 'nope' is not registered" in proc.stderr
    assert "Traceback" not in output_of(proc)
    assert_no_password(proc, tmp_path)


def test_status_of_an_unknown_run_prints_no_password(env, tmp_path):
    proc = run_producer("status", "--run", "nope", env=env, timeout=60)
    assert proc.returncode == EXIT_USAGE and "'nope' is not registered" in proc.stderr
    assert_no_password(proc, tmp_path)


def test_report_of_the_other_job_is_a_clear_message(server, env, tmp_path):
    settings = Settings(broker_url=server.url, work_dir=tmp_path / "work")
    register_editbench(settings, connect(server.url), write_editbench_sample(tmp_path / "b"), "eb")
    proc = run_producer("report", "relations", "--run", "eb", env=env)
    assert proc.returncode == EXIT_USAGE, output_of(proc)
    assert "run 'eb' is a run of the editbench job, not relations" in proc.stderr
    assert "report editbench --run eb" in proc.stderr
    assert "Traceback" not in output_of(proc) and "KeyError" not in output_of(proc)
    assert_no_password(proc, tmp_path)


def test_a_crash_has_its_own_code_one_line_and_the_traceback_in_the_log(server, env, tmp_path):
    client = connect(server.url)
    RunStore(client, "broken").register({"job": "relations"})
    client.hset("evalfleet:broken:meta", "meta", "{not json")  # a store no code path expects
    proc = run_producer("report", "relations", "--run", "broken", env=env)
    assert proc.returncode == EXIT_CRASH, output_of(proc)
    log_path = (tmp_path / "work" / "logs" / "report.log").resolve()
    [line] = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert "crashed: JSONDecodeError" in line and str(log_path) in line
    assert "Traceback" not in output_of(proc)
    assert "Traceback (most recent call last)" in log_path.read_text()
    assert_no_password(proc, tmp_path)


def test_a_wrong_password_is_an_infrastructure_error_and_not_printed(server, env, sample, tmp_path):
    wrong = "Wrong-pw-never-show-91c"
    env = {**env, "EVALFLEET_BROKER_URL": f"redis://:{wrong}@127.0.0.1:{server.port}/0"}
    stage1, input_path = sample
    proc = run_producer("enqueue", "relations", "--stage1", str(stage1), "--input", str(input_path),
                        env=env)
    assert proc.returncode == EXIT_INFRA, output_of(proc)
    assert wrong not in output_of(proc)
    assert "Traceback" not in output_of(proc)


@pytest.mark.parametrize("command", [("enqueue", "relations"), ("report", "relations", "--run", "x"),
                                     ("status",)])
def test_an_unreachable_broker_is_an_infrastructure_error_and_not_printed(command, model_cache, sample,
                                                                          tmp_path):
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {"EVALFLEET_BROKER_URL": url, "EVALFLEET_WORK_DIR": str(tmp_path / "work")}
    stage1, input_path = sample
    extra = ("--stage1", str(stage1), "--input", str(input_path)) if command[0] == "enqueue" else ()
    proc = run_producer(*command, *extra, env=env, timeout=120)
    assert proc.returncode == EXIT_INFRA, output_of(proc)
    assert_no_password(proc, tmp_path)
    assert "Traceback" not in output_of(proc)


def test_a_variable_that_names_no_setting_is_reported_not_silently_ignored(env, tmp_path):
    # Removed settings and a typo: all change nothing, and the command says so.
    proc = run_producer("report", "relations", "--run", "nope",
                        env={**env, "EVALFLEET_DECODER": "static", "EVALFLEET_MAX_BATCHES": "8",
                             "EVALFLEET_RELATIONS_ENGINE": "slot"})
    assert "EVALFLEET_DECODER is not an evalfleet setting: ignored" in proc.stderr
    assert ("EVALFLEET_RELATIONS_ENGINE is no longer a setting: ignored (the slot decoder was "
            "retired") in proc.stderr
    assert ("EVALFLEET_MAX_BATCHES is not an evalfleet setting: ignored (did you mean "
            "EVALFLEET_MAX_BATCH?)") in proc.stderr
    assert proc.returncode == EXIT_USAGE  # the command itself goes on as before (unknown run)


def test_the_judge_key_variable_and_the_container_ids_are_not_reported():
    settings = Settings(judge_endpoint_api_key_env="EVALFLEET_JUDGE_KEY")
    environ = {"EVALFLEET_JUDGE_KEY": "secret", "EVALFLEET_UID": "1000", "EVALFLEET_TOP_K": "3",
               "EVALFLEET_TOPK": "3", "OTHER": "x"}
    assert ignored_variables(settings, environ) == [
        "EVALFLEET_TOPK is not an evalfleet setting: ignored (did you mean EVALFLEET_TOP_K?)"]
