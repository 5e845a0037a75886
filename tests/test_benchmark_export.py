"""A run's edits exported where each public benchmark's own scorer reads them, file by file, and
edits made elsewhere found where a layout names them (the same layouts, read back): runs
registered from edits made elsewhere, so no editor is needed here; the fleet's round trip is
tests/test_external_edits_e2e.py."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark_layouts import png, write_gedit_parquet, write_imgedit, write_kris, write_rise
from conftest import run_producer
from config import Settings
from producer.editbench.export import MANIFEST, export_edits
from producer.editbench.register import register_editbench
from producer.embedded import EmbeddedRedis
from producer.job import ExportError
from shared.messages import EDIT_STAGE
from shared.store import connect


@pytest.fixture
def server(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as running:
        yield running


@pytest.fixture
def client(server):
    return connect(server.url)


@pytest.fixture
def settings(tmp_path, server):
    """The settings of a run judging the edits in ``edits`` (named as ``layout`` says)."""
    def made_elsewhere(edits: Path, layout: str = "", **other: str) -> Settings:
        return Settings(broker_url=server.url, work_dir=tmp_path / "work", edits_dir=str(edits),
                        edits_layout=layout, **other)
    return made_elsewhere


def write_edits(directory: Path, names: dict[str, str], image_format: str = "PNG") -> dict[str, bytes]:
    """An edit per name (a path under ``directory``), each of its own colour; name -> its bytes."""
    out = {}
    for n, (name, colour) in enumerate(names.items()):
        buf = io.BytesIO()
        Image.new("RGB", (32 + n, 24), colour).save(buf, format=image_format)
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(buf.getvalue())
        out[name] = buf.getvalue()
    return out


def files_under(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text(encoding="utf-8"))


COLOURS = ["red", "green", "blue", "yellow", "purple", "cyan", "orange", "pink"]


def test_gedit_exports_edits_and_input_images_where_its_scorer_reads_them(tmp_path, client, settings):
    bench = write_gedit_parquet(tmp_path / "GEdit-Bench")
    keys = [("background_change", "0a1b"), ("background_change", "0c2d"), ("color_alter", "1e3f"),
            ("subject-add", "2a4b")]
    # Made elsewhere, one folder per language (flat: <pair id>.png, GEdit's pair id language/key);
    # the Chinese edit of 2a4b was never made.
    names = [f"{lang}/{key}.png" for _, key in keys for lang in ("en", "cn")][:-1]
    edits = write_edits(tmp_path / "made-elsewhere", dict(zip(names, COLOURS)))
    run = register_editbench(settings(tmp_path / "made-elsewhere", "flat"), client, bench)
    out = tmp_path / "results" / "mymodel"

    export = export_edits(run.store, "gedit", out)

    expected = sorted([f"fullset/{task}/{lang}/{key}{suffix}" for task, key in keys for lang in ("en", "cn")
                       for suffix in (".png", "_SRCIMG.png")][:-2] + [MANIFEST])
    assert files_under(out) == expected
    for task, key in keys:
        for lang in ("en", "cn"):
            if (lang, key) == ("cn", "2a4b"):
                continue
            assert (out / f"fullset/{task}/{lang}/{key}.png").read_bytes() == edits[f"{lang}/{key}.png"]
    # The input image the scorer compares with: the benchmark's input_image, as it was.
    colour = ["red", "green", "blue", "gray"][[k for _, k in keys].index("1e3f")]
    assert (out / "fullset/color_alter/cn/1e3f_SRCIMG.png").read_bytes() == png(colour)
    [missing] = export.not_exported
    assert missing["key"] == "subject-add|cn/2a4b"
    assert str(tmp_path / "made-elsewhere" / "cn" / "2a4b.png") in missing["reason"]
    assert manifest(out)["not_exported"] == export.not_exported and manifest(out)["exported"] == 7

    # Back again: the exported folder is GEdit's layout, read as edits made elsewhere.
    again = register_editbench(settings(out), client, bench)
    assert again.store.meta()["edits"]["layout"] == "gedit"
    first, second = run.store.done(EDIT_STAGE), again.store.done(EDIT_STAGE)
    assert set(second) == set(first)
    assert all(second[k]["edited_digest"] == first[k]["edited_digest"] for k in first)
    [reason] = [f["reason"] for f in again.store.failed(EDIT_STAGE).values()]
    assert f"no edit at {out / 'fullset/subject-add/cn/2a4b.png'}" in reason


def test_an_export_refuses_a_folder_holding_a_file_for_a_pair_without_an_edit(tmp_path, client, settings):
    bench = write_gedit_parquet(tmp_path / "GEdit-Bench")
    write_edits(tmp_path / "made-elsewhere", {"en/0a1b.png": "red"})
    run = register_editbench(settings(tmp_path / "made-elsewhere"), client, bench)
    out = tmp_path / "out"
    stale = out / "fullset" / "color_alter" / "en" / "1e3f.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(png("black"))

    with pytest.raises(ExportError, match=f"{stale} is there already, and this run has no edit of "
                                          "'color_alter|en/1e3f'"):
        export_edits(run.store, "gedit", out)
    assert files_under(out) == ["fullset/color_alter/en/1e3f.png"]  # nothing written


def test_kris_exports_jpeg_edits_per_category_folder_and_flat_names_cannot_tell_its_ids_apart(tmp_path, client, settings):
    bench = write_kris(tmp_path / "KRIS_Bench")
    # Flat names are pair ids, and KRIS's ids repeat across its categories: those pairs fail, saying so.
    write_edits(tmp_path / "flat", {"1.png": "red", "2.png": "green"})
    flat = register_editbench(settings(tmp_path / "flat", "flat"), client, bench)
    reasons = {k: f["reason"] for k, f in flat.store.failed(EDIT_STAGE).items()}
    assert set(reasons) == {"count_change|1", "count_change|2", "temporal_prediction|1", "temporal_prediction|2"}
    assert "names 1.png for this pair and for 'temporal_prediction|1'" in reasons["count_change|1"]

    names = {"count_change/1.jpg": "red", "count_change/2.jpg": "green", "temporal_prediction/2.jpg": "blue"}
    edits = write_edits(tmp_path / "kris-edits", names, "JPEG")
    run = register_editbench(settings(tmp_path / "kris-edits"), client, bench)
    out = tmp_path / "results" / "mymodel"

    export = export_edits(run.store, "kris", out)

    # The scorer reads the inputs from the benchmark's folder: only the edits are written.
    assert files_under(out) == sorted([*names, MANIFEST])
    assert all((out / name).read_bytes() == data for name, data in edits.items())  # JPEG kept bit for bit
    assert [e["key"] for e in export.not_exported] == ["temporal_prediction|1"]


def test_imgedit_exports_edits_by_id_in_one_folder(tmp_path, client, settings):
    bench = write_imgedit(tmp_path / "Benchmark")
    edits = write_edits(tmp_path / "made-elsewhere", {"1082.png": "red", "673.png": "green", "97.png": "blue",
                                                      "667.png": "yellow"})
    run = register_editbench(settings(tmp_path / "made-elsewhere",
                                      benchmark_images=str(tmp_path / "Benchmark" / "singleturn")), client, bench)
    out = tmp_path / "edited_images"

    export = export_edits(run.store, "imgedit", out)

    assert files_under(out) == sorted([*edits, MANIFEST])
    assert all((out / name).read_bytes() == data for name, data in edits.items())
    assert export.not_exported == []


def test_rise_exports_edits_per_category_and_turns_a_jpeg_edit_into_png(tmp_path, client, settings):
    bench = write_rise(tmp_path / "RISEBench")
    made = tmp_path / "made-elsewhere"
    write_edits(made, {"temporal_reasoning_1.png": "red", "causal_reasoning_1.png": "green",
                       "spatial_reasoning_2.png": "blue"})
    write_edits(made, {"logical_reasoning_1.jpg": "yellow"}, "JPEG")
    run = register_editbench(settings(made, "flat"), client, bench)
    out = tmp_path / "outputs" / "mymodel"

    export = export_edits(run.store, "rise", out)

    assert files_under(out) == sorted([
        "images/temporal_reasoning/temporal_reasoning_1.png", "images/causal_reasoning/causal_reasoning_1.png",
        "images/spatial_reasoning/spatial_reasoning_2.png", "images/logical_reasoning/logical_reasoning_1.png",
        MANIFEST])
    exported = Image.open(out / "images/logical_reasoning/logical_reasoning_1.png")
    assert exported.format == "PNG"
    assert (np.asarray(exported.convert("RGB")) == np.asarray(Image.open(made / "logical_reasoning_1.jpg")
                                                              .convert("RGB"))).all()
    assert export.not_exported == []


def test_edits_flags_that_cannot_be_used_stop_the_run_before_anything_is_registered(tmp_path):
    env = {"EVALFLEET_WORK_DIR": str(tmp_path / "work")}
    bench = write_rise(tmp_path / "RISEBench")
    cases = [(["--layout", "kris"], "is the layout of the edits of --edits DIR"),
             (["--edits", str(tmp_path / "nowhere")], "not a folder"),
             (["--edits", str(tmp_path), "--lora", str(tmp_path / "a.safetensors")], "give one of them")]
    for flags, said in cases:
        proc = run_producer("run", "editbench", "--benchmark", str(bench), *flags, env=env, timeout=60)
        assert proc.returncode == 2 and said in proc.stderr, proc.stdout + proc.stderr
    assert not (tmp_path / "work" / "redis").exists()  # no Redis was started: nothing registered
