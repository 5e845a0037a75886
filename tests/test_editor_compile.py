"""EVALFLEET_EDITOR_COMPILE: regional compilation of the editor's transformer, a shared inductor cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from config import Settings, load_settings
from config.settings import SettingsError
from workers.editing.compile import INDUCTOR_CACHE_VARIABLE, compile_editor_transformer, should_compile

CPU = torch.device("cpu")


def _compiled_blocks(pipeline) -> list[bool]:
    return [block._compiled_call_impl is not None for block in pipeline.transformer.transformer_blocks]


def test_auto_compiles_on_cuda_only_and_bad_values_are_refused() -> None:
    assert should_compile("auto", torch.device("cuda")) and not should_compile("auto", CPU)
    assert should_compile("on", CPU) and not should_compile("off", torch.device("cuda"))
    assert load_settings({}).editor_compile == "auto"
    with pytest.raises(SettingsError, match="EVALFLEET_EDITOR_COMPILE='yes'"):
        load_settings({"EVALFLEET_EDITOR_COMPILE": "yes"})


def test_on_a_cpu_auto_leaves_the_editor_eager(editor_pipeline, tmp_path: Path) -> None:
    settings = Settings(work_dir=tmp_path)
    assert not compile_editor_transformer(editor_pipeline, settings, CPU)
    assert not any(_compiled_blocks(editor_pipeline))
    assert not settings.inductor_cache.exists()


def test_on_compiles_every_repeated_block_with_the_host_cache(editor_pipeline, tmp_path: Path,
                                                              monkeypatch) -> None:
    monkeypatch.setenv(INDUCTOR_CACHE_VARIABLE, "restored after the test")
    transformer = editor_pipeline.transformer
    settings = Settings(editor_compile="on", inductor_cache_dir=str(tmp_path / "inductor"))
    assert compile_editor_transformer(editor_pipeline, settings, CPU)
    # Each block is compiled (the same code for all: one compile), the transformer object stays.
    assert editor_pipeline.transformer is transformer and all(_compiled_blocks(editor_pipeline))
    assert len(_compiled_blocks(editor_pipeline)) == transformer.config.num_layers
    assert os.environ[INDUCTOR_CACHE_VARIABLE] == str((tmp_path / "inductor").resolve())
    assert (tmp_path / "inductor").is_dir()


def test_the_cache_defaults_to_the_work_directory(tmp_path: Path) -> None:
    assert Settings(work_dir=tmp_path).inductor_cache == tmp_path / "inductor-cache"
