"""Every file the project reads is a regular file, checked the same way (``shared/files.py``):
a FIFO, a device, a socket or a directory where a file is expected fails at once with a
message naming it, whichever file it is (an input, an image, a judge template, a rubric, a
LoRA, an editor's model index), and never blocks the command."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Callable

import pytest
from PIL import Image

from config import Settings, SettingsError
from conftest import run_producer
from producer.editbench.preflight import check_editor_family, check_loras
from producer.editbench.register import run_templates
from producer.editbench.sample import write_editbench_sample
from shared.editbench.data import prepare_benchmark
from shared.editbench.prompt_manager import PromptTemplateError, read_templates
from shared.editbench.rubric import RubricError, read_rubric_templates
from shared.errors import InputFileError
from shared.files import UnreadableFile
from shared.images import ImageFileError, open_image
from shared.jsonio import read_json
from shared.keys import content_digest

SHIPPED_PROMPTS = Settings().prompts


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _directory(path: Path) -> None:
    path.mkdir()


def _device(path: Path) -> None:
    path.symlink_to("/dev/zero")  # a device that never ends


def _socket(path: Path) -> None:
    # A unix socket's path is limited to ~108 bytes: bind it in a short folder, link it here.
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "s"))
    path.symlink_to(folder / "s")


SPECIAL = {"fifo": (_fifo, "FIFO"), "directory": (_directory, "a directory"),
           "device": (_device, "device"), "socket": (_socket, "a socket")}


def at_once(call: Callable[[], object]) -> tuple[object, BaseException | None]:
    """``call``'s (result, exception); a read that blocks fails the test, not the whole suite."""
    outcome: dict[str, tuple[object, BaseException | None]] = {}

    def target() -> None:
        try:
            outcome["done"] = (call(), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            outcome["done"] = (None, exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)  # a bound for a broken build only: a refusal takes milliseconds
    assert "done" in outcome, "the read blocked"
    return outcome["done"]


def refused_at_once(call: Callable[[], object], error: type[Exception]) -> str:
    """The message of ``error``, raised by ``call`` without blocking."""
    _, raised = at_once(call)
    assert isinstance(raised, error), repr(raised)
    return str(raised)


def _prompts_copy(tmp_path: Path) -> Path:
    prompts = tmp_path / "prompts"
    shutil.copytree(SHIPPED_PROMPTS, prompts)
    return prompts


def _replace(path: Path, make: Callable[[Path], None]) -> Path:
    if path.exists():
        path.unlink()
    make(path)
    return path


# Each reader: (how it places the special file under tmp_path, the call that reads it, the error).
def _json_input(tmp_path, make):
    path = _replace(tmp_path / "stage1.json", make)
    return path, lambda: read_json(path), InputFileError


def _image(tmp_path, make):
    path = _replace(tmp_path / "image.png", make)
    return path, lambda: open_image(path), ImageFileError


def _template(tmp_path, make):
    prompts = _prompts_copy(tmp_path)
    path = _replace(prompts / "default.user.txt", make)
    return path, lambda: read_templates(prompts), PromptTemplateError


def _category_template(tmp_path, make):
    prompts = _prompts_copy(tmp_path)
    path = _replace(prompts / "物理.system.txt", make)
    return path, lambda: run_templates(Settings(prompts_dir=str(prompts))), SettingsError


def _rubric_file(tmp_path, make):
    prompts = _prompts_copy(tmp_path)
    path = _replace(prompts / "rubrics" / "kris" / "rubric.json", make)
    return path, lambda: read_rubric_templates(prompts, "kris"), RubricError


def _reasoning_suffix(tmp_path, make):
    prompts = _prompts_copy(tmp_path)
    path = _replace(prompts / "reasoning" / "suffix.txt", make)
    return path, lambda: read_rubric_templates(prompts, "default", reasoning=True), RubricError


def _lora(tmp_path, make):
    # A LoRA given as a folder (a LoRA given as a file that is a folder is such a folder).
    folder = tmp_path / "lora"
    folder.mkdir()
    path = _replace(folder / "style.safetensors", make)
    settings = Settings(editor_loras=str(folder))
    return path, lambda: check_loras(settings), SettingsError


def _lora_digest(tmp_path, make):
    folder = tmp_path / "lora"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    path = _replace(folder / "weights.bin", make)
    return path, lambda: content_digest(folder), UnreadableFile


def _editor_index(tmp_path, make):
    editor = tmp_path / "editor"
    editor.mkdir()
    path = _replace(editor / "model_index.json", make)
    return path, lambda: check_editor_family(str(editor), ""), SettingsError


READERS = {"json-input": _json_input, "image": _image, "judge-template": _template,
           "category-template": _category_template, "rubric": _rubric_file,
           "reasoning-suffix": _reasoning_suffix, "lora": _lora, "lora-folder-digest": _lora_digest,
           "editor-model-index": _editor_index}


# A folder inside a LoRA folder is part of it, not a special file.
CASES = [(r, k) for r in READERS for k in SPECIAL if (r, k) != ("lora-folder-digest", "directory")]


@pytest.mark.parametrize("reader, kind", CASES, ids=[f"{r}-{k}" for r, k in CASES])
def test_a_special_file_is_refused_at_once_naming_it(tmp_path, reader, kind):
    make, words = SPECIAL[kind]
    path, call, error = READERS[reader](tmp_path, make)
    message = refused_at_once(call, error)
    assert str(path) in message and words in message and "not a regular file" in message


@pytest.mark.parametrize("kind", list(SPECIAL))
def test_a_benchmark_image_that_is_a_special_file_fails_its_pair_alone(tmp_path, kind):
    make, words = SPECIAL[kind]
    Image.new("RGB", (8, 8), "red").save(tmp_path / "good.png")
    make(tmp_path / "bad.png")
    pair = {"original_description": "a red square", "edit_instruction": "make it blue"}
    benchmark = tmp_path / "bench.json"
    benchmark.write_text(json.dumps({"c": [{**pair, "pair_id": "good", "original_image_path": "good.png"},
                                           {**pair, "pair_id": "bad", "original_image_path": "bad.png"}]}))
    result, raised = at_once(lambda: prepare_benchmark(benchmark))
    assert raised is None, repr(raised)
    assert [p.pair_id for p in result.pairs] == ["good"]
    [reason] = result.failures.values()
    assert "original_image_path" in reason and str(tmp_path / "bad.png") in reason and words in reason


def test_a_judge_template_that_is_a_directory_exits_2_naming_it(tmp_path):
    prompts = _prompts_copy(tmp_path)
    template = _replace(prompts / "default.system.txt", _directory)
    benchmark = write_editbench_sample(tmp_path / "bench")
    proc = run_producer("run", "editbench", "--benchmark", str(benchmark),
                        env={"EVALFLEET_WORK_DIR": str(tmp_path / "work"), "EVALFLEET_PROMPTS_DIR": str(prompts)},
                        timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{template}: cannot read the file: it is a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
