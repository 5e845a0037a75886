"""Input files by URL: a benchmark or a relations input read from an object store (a real
S3-compatible server, SeaweedFS) as from a local copy, the paths inside it resolving beside it,
and the run's identity the bytes' as for the local copy."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from benchmark_layouts import write_gedit_jsonl, write_gedit_parquet, write_imgedit, write_kris, write_rise
from conftest import private_env, read_json, run_producer
from producer.editbench.sample import write_editbench_sample
from producer.embedded import EmbeddedRedis
from producer.relations.sample import write_relations_sample
from seaweedfs import BUCKET
from shared.editbench.data import prepare_benchmark
from shared.editbench.formats.fields import Reading
from shared.relations.data import prepare_data_for_inference
from shared.store import RunStore, connect

# Each benchmark layout as a writer of a folder; it returns the path a run is given (the folder
# itself for the folder layouts). ImgEdit's images are in a folder of their own (--images).
IMAGES = {"imgedit": "singleturn"}
LAYOUTS = {
    "category-map": lambda d: write_editbench_sample(d, image_files=True),
    "json-lines": lambda d: write_editbench_sample(d, "json-lines", image_files=True),
    "gedit-parquet-folder": write_gedit_parquet,
    "gedit-jsonl": write_gedit_jsonl,
    "kris-folder": write_kris,
    "imgedit": write_imgedit,
    "rise": write_rise,
}


def uploaded(s3_server, directory: Path, prefix: str, path: Path) -> str:
    """Every file under ``directory`` put under ``s3://BUCKET/prefix``; the URL of ``path``."""
    fs = s3_server.filesystem()
    for file in directory.rglob("*"):
        if file.is_file():
            fs.pipe_file(f"{BUCKET}/{prefix}/{file.relative_to(directory).as_posix()}", file.read_bytes())
    relative = path.relative_to(directory).as_posix()
    return f"s3://{BUCKET}/{prefix}" + ("" if relative == "." else f"/{relative}")


def read_as_a_run_does(prepared) -> tuple:
    return (prepared.shape, prepared.categories, sorted(prepared.failures), prepared.input_digests,
            prepared.image_digests,
            [(p.key, p.edit_instruction, p.original_description, [i.data for i in p.images], p.fields)
             for p in prepared.pairs])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_benchmark_by_url_reads_as_its_local_copy_its_images_beside_it(layout, s3_env, s3_server, tmp_path):
    local = LAYOUTS[layout](tmp_path / layout)
    url = uploaded(s3_server, tmp_path / layout, f"benchmarks/{layout}", local)

    images = IMAGES.get(layout)
    on_disk = prepare_benchmark(local, reading=Reading(images=str(tmp_path / layout / images) if images else ""))
    by_url = prepare_benchmark(url, reading=Reading(images=f"s3://{BUCKET}/benchmarks/{layout}/{images}"
                                                    if images else ""))

    assert by_url.pairs and read_as_a_run_does(by_url) == read_as_a_run_does(on_disk)
    # The images named by path are the objects beside it, not the local files.
    assert all(file.startswith(f"s3://{BUCKET}/benchmarks/{layout}/") for file in by_url.image_files)
    assert all(str(file).startswith(f"s3://{BUCKET}/benchmarks/{layout}/") for file in by_url.input_files)


def test_relations_inputs_by_url_name_their_images_beside_them_and_are_the_run_of_their_local_copy(
        s3_env, s3_server, tmp_path):
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    stage1_url = uploaded(s3_server, tmp_path / "sample", "relations", stage1)
    input_url = uploaded(s3_server, tmp_path / "sample", "relations", input_path)
    with EmbeddedRedis(tmp_path / "redis") as server:  # no worker: registering is what is looked at
        env = private_env(server, tmp_path / "models", tmp_path / "work", **s3_server.env())
        by_url = run_producer("enqueue", "relations", "--stage1", stage1_url, "--input", input_url, env=env)
        assert by_url.returncode == 0, by_url.stdout + by_url.stderr
        meta = RunStore(connect(server.url), run := by_url.stdout.strip()).meta()
        local = run_producer("enqueue", "relations", "--stage1", str(stage1), "--input", str(input_path), env=env)
        assert local.returncode == 0, local.stdout + local.stderr
    # The same bytes are the same run, whether read from the store or from the disk.
    assert local.stdout.split() == [run]
    assert meta["input"] == input_url and meta["stage1"] == stage1_url
    images = {r["image_path"] for r in read_json(input_path)}
    pairs = prepare_data_for_inference(stage1_url, input_url, 10).pairs
    assert {p["image_path"] for p in pairs} == {f"s3://{BUCKET}/relations/{image}" for image in images}


def test_an_input_that_cannot_be_read_stops_the_run_at_its_start_naming_the_url(s3_server, tmp_path):
    stage1, input_path = write_relations_sample(tmp_path / "sample")
    stage1_url = uploaded(s3_server, tmp_path / "sample", "errors", stage1)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "sample"))
    with (EmbeddedRedis(tmp_path / "redis") as server,
          http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as web):
        env = private_env(server, tmp_path / "models", tmp_path / "work")
        threading.Thread(target=web.serve_forever, daemon=True).start()
        port = web.server_address[1]
        wrong_secret = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret-4f1a"}
        cases = [  # (job and flags, credentials, the URL named, the store's answer)
            (["editbench", "--benchmark", f"s3://{BUCKET}/errors/nothing.json"], s3_server.env(),
             f"s3://{BUCKET}/errors/nothing.json", "no such object"),
            (["relations", "--stage1", stage1_url, "--input", "s3://no-such-bucket/input.json"],
             s3_server.env(), "s3://no-such-bucket/input.json", "NoSuchBucket"),
            (["relations", "--stage1", stage1_url, "--input", f"s3://{BUCKET}/errors/input.json"],
             wrong_secret, stage1_url, "the store answered 403"),
            (["editbench", "--benchmark", "nosuch://host/benchmark.json"], s3_server.env(),
             "nosuch://host/benchmark.json", "not a URL fsspec can serve"),
            (["editbench", "--benchmark", f"http://reader:pw-9c2e@127.0.0.1:{port}/missing.json"],
             s3_server.env(), f"http://reader:**@127.0.0.1:{port}/missing.json", "no such object"),
        ]
        for flags, credentials, named, answer in cases:
            proc = run_producer("run", *flags, env={**env, **credentials}, timeout=120)
            said = proc.stdout + proc.stderr
            assert proc.returncode == 2, said
            assert f"{named}: " in said and answer in said, said
            assert "not-the-secret-4f1a" not in said and "pw-9c2e" not in said
            assert s3_server.env()["AWS_SECRET_ACCESS_KEY"] not in said
        web.shutdown()
