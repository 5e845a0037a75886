"""Edit one image with a diffusers edit pipeline, reproducibly.

The same code drives every supported family (``shared/editbench/editor_families.py``: how each
pipeline takes the image, the prompt and its guidance), real ones (CUDA, bf16, tens of
steps, about 1024x1024-pixel outputs) and tiny random ones (CPU, 2 steps, 128x128).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

import torch
from PIL import Image

from shared.editbench.editor_families import EditFamily, EditSettings, aspect_problem, family_for
from shared.images import as_displayed
from workers.editing.approximate import step_cache_of

logger = logging.getLogger(__name__)


def pipeline_modules(pipeline: Any) -> dict[str, torch.nn.Module]:
    """Every weight-holding component of a pipeline (transformer, VAE, text encoder(s),
    ...), by component name, for moving between host and device."""
    return {name: component for name, component in pipeline.components.items()
            if isinstance(component, torch.nn.Module)}


class Editor:
    """Applies an instruction to an image; a seed fixes the starting noise."""

    def __init__(self, pipeline: Any, settings: EditSettings) -> None:
        self.family = self.family_of(pipeline)
        if settings.steps < 1:
            raise ValueError(f"steps must be at least 1, got {settings.steps} (EVALFLEET_EDIT_STEPS)")
        self._multiple = self.family.size_multiple(pipeline)
        if settings.size < self._multiple:
            raise ValueError(f"size must be at least {self._multiple} pixels, got {settings.size} "
                             "(EVALFLEET_EDIT_SIZE)")
        self.pipeline = pipeline
        self.settings = settings
        # What the last edit's step cache did (empty without one): the task stores it.
        self.last_cache: dict[str, int] = {}
        # Per-step progress bars would flood the worker logs.
        pipeline.set_progress_bar_config(disable=True)

    def edit(self, image: Image.Image | list[Image.Image], instruction: str, seed: int) -> Image.Image:
        """The edited image, about ``size`` x ``size`` pixels in the (first) input's aspect ratio;
        ``image`` a list of several for a family that takes them."""
        images = [as_displayed(one) for one in (image if isinstance(image, list) else [image])]
        problem = (self.family.several_images_problem(len(images))
                   or next(filter(None, (aspect_problem(i.width, i.height) for i in images)), None))
        if problem:  # checked before the call (and the aspect when the benchmark was read)
            raise ValueError(problem)
        width, height = self.output_size(images[0].width, images[0].height)
        generator = torch.Generator(device=self.pipeline.device).manual_seed(seed)
        given = images if isinstance(image, list) else images[0]
        arguments = self.family.call_arguments(given, instruction, self.settings, width, height)
        cache = step_cache_of(self.pipeline)
        if cache is not None:
            cache.reset()
        with torch.inference_mode():
            result = self.pipeline(**arguments, num_inference_steps=self.settings.steps,
                                   generator=generator, output_type="pil")
        self.last_cache = cache.counts() if cache is not None else {}
        return result.images[0]

    @staticmethod
    def family_of(pipeline: Any) -> EditFamily:
        """The adapter of the pipeline's family (UnsupportedEditorError for another class)."""
        # The checkpoint's path or hub id names it in the error (a pipeline built in code has none).
        class_name = type(pipeline).__name__
        return family_for(class_name, getattr(pipeline, "name_or_path", None) or class_name)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of about ``size**2`` pixels in the aspect ratio of ``width/height``."""
        ratio = width / height
        out_width = math.sqrt(self.settings.size * self.settings.size * ratio)
        out_height = out_width / ratio
        return self._round(out_width), self._round(out_height)

    def _round(self, side: float) -> int:
        return max(self._multiple, round(side / self._multiple) * self._multiple)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The pipeline's weight-holding components, for moving between host and device."""
        return pipeline_modules(self.pipeline)

    @staticmethod
    def seed_for(key: str) -> int:
        """A stable 31-bit seed for an item key, so rerunning the item reproduces its image."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


seed_for = Editor.seed_for
