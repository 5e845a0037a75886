"""The wire and the inputs: no pickle, Redis with a password on loopback only (the one-command
mode's too), confined image paths."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import psutil
import pytest
import redis
from celery import Celery

from conftest import command_line, private_env, read_json, run_producer, started_fleet, wait_until
from held_judge import RUN, OneCommandRun, held_judge, in_flight
from producer.embedded import PASSWORD_FILE, EmbeddedRedis
from producer.relations.sample import write_relations_sample
from shared.errors import InputFileError
from shared.messages import RELATIONS_TASK
from shared.relations.data import prepare_data_for_inference

PASSWORD = "s3cret-Pw-4-tests"


class CreatesAFileWhenUnpickled:
    """A payload with an observable side effect: unpickling it creates a directory."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def send_pickled_task(broker_url: str, marker: Path) -> None:
    """What an attacker (or a misconfigured client) with access to Redis could send."""
    app = Celery("attacker", broker=broker_url)
    app.conf.update(task_serializer="pickle", accept_content=["pickle", "json", "msgpack"])
    app.send_task(RELATIONS_TASK, args=["any-run", [CreatesAFileWhenUnpickled(marker)]],
                  queue="relations", serializer="pickle")


def test_pickled_message_is_rejected_unexecuted_and_the_worker_goes_on(model_cache, tmp_path):
    marker = tmp_path / "created-by-pickle"
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    log_path = tmp_path / "workers.log"
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, model_cache, tmp_path / "work")
        with started_fleet(env, ["relations"], tmp_path, name="sec"):
            send_pickled_task(server.url, marker)
            wait_until(lambda: "ContentDisallowed" in log_path.read_text(), 30, "the rejection in the log")
            # The worker is still there and works: a normal run completes.
            proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                                "--output", str(tmp_path / "out.json"), env=env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            # The pickled message was dropped, not left to be redelivered.
            assert connect_plain(server.url).llen("relations") == 0
    assert not marker.exists(), "the pickle payload ran"
    log = log_path.read_text()
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert "The message has been ignored and discarded" in log
    assert read_json(tmp_path / "out.json")["summary"]["total_pairs"] == 13


def connect_plain(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def test_redis_with_a_password_end_to_end_and_loopback_only(model_cache, tmp_path, caplog):
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    with caplog.at_level(logging.INFO, logger="producer.embedded"):
        server = EmbeddedRedis(tmp_path / "redis", password=PASSWORD)
        server.start()
    try:
        assert server.url.startswith(f"redis://:{PASSWORD}@127.0.0.1:")
        # Loopback only, by configuration and in fact.
        client = connect_plain(server.url)
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        listening = {c.laddr.ip for c in psutil.Process(server.proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}
        # No password, no commands.
        anonymous = redis.Redis(host="127.0.0.1", port=server.port)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="wrong").ping()

        env = private_env(server, model_cache, tmp_path / "work")
        output = tmp_path / "out.json"
        with started_fleet(env, ["relations"], tmp_path, name="pw"):
            proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                                "--output", str(output), env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert read_json(output)["summary"]["total_pairs"] == 13
    finally:
        server.stop()
    # The password appears in no log.
    assert PASSWORD not in caplog.text and ":**@127.0.0.1" in caplog.text
    assert PASSWORD not in (tmp_path / "workers.log").read_text()
    assert PASSWORD not in proc.stdout + proc.stderr


@pytest.mark.parametrize("password", [PASSWORD, 'with "quotes" \\ and spaces'])
def test_the_embedded_redis_password_is_not_on_its_command_line(tmp_path, password):
    with EmbeddedRedis(tmp_path / "redis", password=password) as server:
        # What ps shows every user of the machine: the arguments it was started with (until
        # redis-server rewrites its title) and its command line now.
        for cmdline in (" ".join(server.proc.args), " ".join(psutil.Process(server.proc.pid).cmdline())):
            assert "redis-server" in cmdline and password not in cmdline and "requirepass" not in cmdline
        assert redis.Redis(host="127.0.0.1", port=server.port, password=password).ping()
        with pytest.raises(redis.exceptions.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).ping()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _listening_port(process: psutil.Process) -> int:
    [listen] = [c for c in process.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
    return listen.laddr.port


def test_the_one_command_redis_takes_no_client_without_its_password_and_never_shows_it(model_cache, tmp_path):
    with held_judge() as judge:
        run = OneCommandRun(tmp_path, model_cache, judge)
        producer = run.start()
        children = in_flight(producer, judge)  # the run is going: a score task waits for the judge
        [server] = [p for p in children if "redis-server" in command_line(p)]
        port = _listening_port(server)
        data = run.work / "redis"
        password = (data / PASSWORD_FILE).read_text().strip()
        # Owner-only: the password file, and the directory of the append-only file beside it.
        assert _mode(data / PASSWORD_FILE) == 0o600 and _mode(data) == 0o700
        # Another local user (no password, or a guessed one) can neither read nor write nor delete.
        for guess in (None, "", "evalfleet"):
            intruder = redis.Redis(host="127.0.0.1", port=port, password=guess)
            with pytest.raises(redis.exceptions.AuthenticationError):
                intruder.keys("*")
            with pytest.raises(redis.exceptions.AuthenticationError):
                intruder.flushall()
        assert RUN in connect_plain(f"redis://:{password}@127.0.0.1:{port}/0").smembers("evalfleet:runs")
        # ps shows no process of the run with the password in its arguments (the workers have it
        # in their environment).
        for process in [psutil.Process(producer.pid), *children]:
            assert password not in " ".join(process.cmdline())
        judge.released.set()
        out, _ = producer.communicate(timeout=300)
    assert producer.returncode == 0, out

    # status (and a resumed run) finds the same password in the work directory.
    status = run_producer("status", "--run", RUN, "--json", env=run.env)
    assert status.returncode == 0 and RUN in status.stdout, status.stdout + status.stderr
    assert (data / PASSWORD_FILE).read_text().strip() == password
    # The password appears in no output, log, report or Redis file (its own file aside).
    shown = {"terminal": out + status.stdout + status.stderr}
    for path in run.work.rglob("*"):
        if path.is_file() and path != data / PASSWORD_FILE:
            shown[str(path)] = path.read_bytes().decode("utf-8", "replace")
    assert any(path.endswith("editbench_report.json") for path in shown)
    assert [where for where, text in shown.items() if password in text] == []


def test_a_password_file_others_could_read_or_that_is_a_link_is_replaced(tmp_path):
    data = tmp_path / "redis"
    with EmbeddedRedis(data) as server:
        first = server.password
    (data / PASSWORD_FILE).chmod(0o644)  # readable by others: it may be known, it is not used
    with EmbeddedRedis(data) as server:
        second = server.password
    assert second != first and _mode(data / PASSWORD_FILE) == 0o600
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("a" * 43)
    (data / PASSWORD_FILE).unlink()
    (data / PASSWORD_FILE).symlink_to(elsewhere)  # a link is not followed, nor written through
    with EmbeddedRedis(data) as server:
        assert server.password not in (second, "a" * 43)
    assert elsewhere.read_text() == "a" * 43 and not (data / PASSWORD_FILE).is_symlink()
    assert _mode(data / PASSWORD_FILE) == 0o600
    # The same password for every start over the same data: status and report connect.
    with EmbeddedRedis(data) as again:
        assert again.password == server.password


# --- image paths confined to the data root -------------------------------------------------------------

@pytest.fixture
def confined(tmp_path) -> tuple[Path, Path, Path, Path]:
    """(data root, stage-1 file, input file, a directory outside the root with an image)."""
    root = tmp_path / "data"
    stage1, input_path = write_relations_sample(root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "secret.png").write_bytes((root / "images" / "2343729.png").read_bytes())
    return root, stage1, input_path, outside


def point_first_image_at(input_path: Path, image_path: str) -> None:
    images = json.loads(input_path.read_text())
    images[0]["image_path"] = image_path  # image 2343729, three pairs
    input_path.write_text(json.dumps(images))


ESCAPES = {
    "dot-dot": lambda root, outside: "../elsewhere/secret.png",
    "absolute-elsewhere": lambda root, outside: str(outside / "secret.png"),
    "symlink-outside": lambda root, outside: _link(root / "images" / "link.png", outside / "secret.png"),
    "symlinked-directory": lambda root, outside: _link(root / "images" / "sub", outside) + "/secret.png",
}


def _link(link: Path, target: Path) -> str:
    link.symlink_to(target)
    return str(link.relative_to(link.parents[1]))


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_image_paths_escaping_the_data_root_are_refused(confined, escape):
    root, stage1, input_path, outside = confined
    point_first_image_at(input_path, ESCAPES[escape](root, outside))
    prepared = prepare_data_for_inference(stage1, input_path, 10, data_root=root)
    refused = {k: v for k, v in prepared.failures.items() if k.startswith("2343729|")}
    assert len(refused) == 3 and len(prepared.pairs) == 10
    for reason in refused.values():
        assert str(input_path) in reason and "record [0] (image_id 2343729)" in reason
        assert "field 'image_path'" in reason and "outside the data root" in reason
        assert str(outside.resolve()) in reason


def test_image_paths_inside_the_data_root_are_accepted_resolved(confined, tmp_path):
    root, stage1, input_path, _ = confined
    # A link inside the root pointing inside it is fine; the stored path is the real one.
    point_first_image_at(input_path, _link(root / "images" / "alias.png", root / "images" / "2343729.png"))
    prepared = prepare_data_for_inference(stage1, input_path, 10, data_root=root)
    assert prepared.failures == {} and len(prepared.pairs) == 13
    first = [p for p in prepared.pairs if str(p["image_id"]) == "2343729"][0]
    assert first["image_path"] == str((root / "images" / "2343729.png").resolve())
    # Without a data root nothing is confined (the default).
    point_first_image_at(input_path, "../elsewhere/secret.png")
    assert prepare_data_for_inference(stage1, input_path, 10).failures == {}
    with pytest.raises(InputFileError, match="EVALFLEET_DATA_ROOT"):
        prepare_data_for_inference(stage1, input_path, 10, data_root=tmp_path / "missing")


def test_data_root_setting_end_to_end(fleet, fleet_env, redis_client, confined, tmp_path):
    root, stage1, input_path, outside = confined
    point_first_image_at(input_path, "../elsewhere/secret.png")
    output = tmp_path / "out.json"
    proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                        "--output", str(output), env={**fleet_env, "EVALFLEET_DATA_ROOT": str(root)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = read_json(output)
    assert report["summary"]["total_pairs"] == 10
    assert {f["key"].split("|")[0] for f in report["failed"]} == {"2343729"}
    assert all("outside the data root" in f["reason"] for f in report["failed"])


def test_workers_enforce_the_data_root_too(model_cache, confined, tmp_path):
    """A producer without the setting (or a link swapped after preparation): the worker refuses."""
    root, stage1, input_path, outside = confined
    point_first_image_at(input_path, str(outside / "secret.png"))
    output = tmp_path / "out.json"
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = private_env(server, model_cache, tmp_path / "work")
        with started_fleet({**env, "EVALFLEET_DATA_ROOT": str(root)}, ["relations"], tmp_path, name="root"):
            proc = run_producer("run", "relations", "--stage1", str(stage1), "--input", str(input_path),
                                "--output", str(output), env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = read_json(output)["failed"]
    assert {f["key"].split("|")[0] for f in failed} == {"2343729"}
    for failure in failed:
        assert "field 'image_path'" in failure["reason"] and "outside the data root" in failure["reason"]
