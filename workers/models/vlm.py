"""The run's Qwen3-VL, resident in this worker: shared by the relations generator and the judge."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel, ProcessorMixin

from workers.model_host import ModelHost, model_name
from workers.models.loading import QWEN3_VL, load_vlm


class LoadedVlm(NamedTuple):
    processor: ProcessorMixin
    model: PreTrainedModel
    pool_name: str  # the model's name in the residency pool


def vlm(host: ModelHost, ref: str, revision: str, dtype: torch.dtype, setting: str) -> LoadedVlm:
    """The Qwen3-VL ``ref`` in the run's ``revision`` and ``dtype``, made resident in this worker.

    ``setting`` names the variable that chose ``ref``, for the error if it cannot be loaded.
    """

    def load() -> tuple[Any, dict]:
        kwargs = host.load_kwargs(ref, QWEN3_VL, dtype)
        processor, model = load_vlm(kwargs.pop("ref"), revision=revision, setting=setting, **kwargs)
        return (processor, model), {"model": model}

    name = model_name("vlm", ref, revision, dtype)
    processor, model = host.resident(name, load)
    return LoadedVlm(processor, model, name)
