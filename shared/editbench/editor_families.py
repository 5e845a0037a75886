"""The diffusers edit pipelines editbench drives, one adapter per family.

Families differ in how their call takes the image(s) and the prompt, which guidance
argument they have (true classifier-free guidance or a distilled guidance scale),
whether a negative prompt is used, the sizes they accept, and their default steps and
guidance. An adapter says each of these for one pipeline class; ``FAMILIES`` maps the
class name of a checkpoint's ``model_index.json`` (``_class_name``) to its adapter.

Pure Python (no torch): the producer checks a checkpoint's class before a run starts,
the workers call the pipeline through the adapter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

# A tiny editor's defaults: a few seconds per edit on a laptop CPU.
TINY_STEPS = 2
TINY_SIZE = 128
# A real editor's default output area is about DEFAULT_SIZE x DEFAULT_SIZE pixels (all three
# families are trained around one megapixel).
DEFAULT_SIZE = 1024


# The longest side an editor takes, in multiples of the shortest: the families scale an input
# to a fixed area (0.15 to 1 megapixel), and far beyond this ratio the short side rounds to 0
# pixels inside the pipeline ("height and width must be > 0") while the long side explodes.
MAX_ASPECT = 16


def aspect_problem(width: int, height: int) -> str | None:
    """Why an editor cannot take an image of ``width`` x ``height`` pixels, or None."""
    if max(width, height) <= MAX_ASPECT * min(width, height):
        return None
    return (f"the image is {width}x{height} pixels; the editors take images whose longer side is "
            f"at most {MAX_ASPECT} times the shorter (crop or pad it)")


class UnsupportedEditorError(ValueError):
    """The checkpoint's pipeline class has no adapter here."""


@dataclass(frozen=True)
class EditSettings:
    """What one run's edits are made with (after the family's defaults are applied).

    ``negative_prompt`` is None for a family or a guidance that does not use one.
    """

    family: str
    steps: int
    size: int
    guidance: float
    guidance_argument: str
    negative_prompt: str | None

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


class EditFamily:
    """One pipeline class: its defaults and how its call takes an edit."""

    pipeline_class: ClassVar[str]
    # Whether its call takes several input images (a benchmark item with several, KRIS's
    # temporal frames): a family that takes one fails such a pair alone, saying so.
    takes_several_images: ClassVar[bool] = False
    default_steps: ClassVar[int]
    default_guidance: ClassVar[float]
    guidance_argument: ClassVar[str]

    def settings(self, *, steps: int, size: int, guidance: float, negative_prompt: str,
                 tiny: bool) -> EditSettings:
        """The run's settings with this family's defaults for those left at 0."""
        steps = steps or (TINY_STEPS if tiny else self.default_steps)
        guidance = guidance or self.default_guidance
        return EditSettings(family=self.pipeline_class, steps=steps,
                            size=size or (TINY_SIZE if tiny else DEFAULT_SIZE),
                            guidance=guidance, guidance_argument=self.guidance_argument,
                            negative_prompt=self.negative_prompt(negative_prompt, guidance))

    def negative_prompt(self, negative_prompt: str, guidance: float) -> str | None:
        return None

    def size_multiple(self, pipeline: Any) -> int:
        """Output sides must be multiples of this: latents are packed in 2x2 patches of
        VAE latents, so twice the VAE's downsampling."""
        return 2 * pipeline.vae_scale_factor

    def call_arguments(self, image: Any, instruction: str, settings: EditSettings,
                       width: int, height: int) -> dict[str, Any]:
        """The pipeline call's arguments for one edit, but the steps, seed and output type;
        ``image`` a list of images for a family that takes several."""
        raise NotImplementedError

    def several_images_problem(self, count: int) -> str | None:
        """Why this family cannot edit from ``count`` input images, or None."""
        if count <= 1 or self.takes_several_images:
            return None
        several = [f.pipeline_class for f in FAMILIES.values() if f.takes_several_images]
        return (f"the item has {count} input images and the editor's {self.pipeline_class} takes one; "
                f"{', '.join(several)} (Qwen/Qwen-Image-Edit-2509, -2511) takes several")


class QwenImageEdit(EditFamily):
    """Qwen/Qwen-Image-Edit: one image, true classifier-free guidance with a negative prompt."""

    pipeline_class = "QwenImageEditPipeline"
    default_steps = 50
    default_guidance = 4.0
    guidance_argument = "true_cfg_scale"

    def negative_prompt(self, negative_prompt: str, guidance: float) -> str | None:
        # The pipeline runs true CFG only when given a negative prompt, and warns when
        # given one it will not use (guidance <= 1).
        return negative_prompt if guidance > 1 else None

    def size_multiple(self, pipeline: Any) -> int:
        # The pipeline rounds its own default sizes to multiples of 32.
        return max(32, super().size_multiple(pipeline))

    def images(self, image: Any) -> Any:
        return image

    def call_arguments(self, image: Any, instruction: str, settings: EditSettings,
                       width: int, height: int) -> dict[str, Any]:
        return {"image": self.images(image), "prompt": instruction,
                "negative_prompt": settings.negative_prompt, "true_cfg_scale": settings.guidance,
                "width": width, "height": height}


class QwenImageEditPlus(QwenImageEdit):
    """Qwen/Qwen-Image-Edit-2509 and -2511: a list of images (one, or a benchmark item's
    several), fewer default steps."""

    pipeline_class = "QwenImageEditPlusPipeline"
    takes_several_images = True
    default_steps = 40

    def images(self, image: Any) -> Any:
        return list(image) if isinstance(image, (list, tuple)) else [image]


class FluxKontext(EditFamily):
    """black-forest-labs/FLUX.1-Kontext-dev: guidance-distilled (``guidance_scale``, no
    negative prompt); the output area is ``max_area`` in the aspect of ``width/height``."""

    pipeline_class = "FluxKontextPipeline"
    default_steps = 28
    default_guidance = 2.5
    guidance_argument = "guidance_scale"

    def call_arguments(self, image: Any, instruction: str, settings: EditSettings,
                       width: int, height: int) -> dict[str, Any]:
        # The pipeline recomputes its size from max_area and the aspect of width/height:
        # with max_area = width * height and both multiples, it keeps them as they are.
        return {"image": image, "prompt": instruction, "guidance_scale": settings.guidance,
                "width": width, "height": height, "max_area": width * height}


FAMILIES: dict[str, EditFamily] = {
    family.pipeline_class: family for family in (QwenImageEdit(), QwenImageEditPlus(), FluxKontext())
}


def family_for(class_name: str, ref: str) -> EditFamily:
    """The adapter of a checkpoint's pipeline class; UnsupportedEditorError names the others."""
    try:
        return FAMILIES[class_name]
    except KeyError:
        raise UnsupportedEditorError(unsupported_message(ref, class_name)) from None


def unsupported_message(ref: str, class_name: str) -> str:
    return (f"the editor {ref!r} is a {class_name or 'pipeline without a _class_name'} "
            f"(model_index.json), which editbench cannot drive: supported pipelines are "
            f"{', '.join(FAMILIES)} (EVALFLEET_EDITOR_MODEL)")
