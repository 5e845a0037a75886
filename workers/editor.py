"""Edit one image with a Qwen-Image-Edit pipeline, reproducibly.

The same code drives the real ``Qwen/Qwen-Image-Edit`` (CUDA, bf16, 50 steps,
1024x1024-pixel outputs) and the tiny random pipeline (CPU, 2 steps, 128x128).
"""

from __future__ import annotations

import hashlib
import logging
import math

import torch
from diffusers import QwenImageEditPipeline
from PIL import Image

logger = logging.getLogger(__name__)

# The pipeline itself rounds its default sizes to multiples of 32.
_SIZE_MULTIPLE = 32


class Editor:
    """Applies an instruction to an image; a seed fixes the starting noise."""

    def __init__(
        self,
        pipeline: QwenImageEditPipeline,
        *,
        steps: int,
        size: int,
        true_cfg_scale: float,
        negative_prompt: str,
    ) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps} (EVALFLEET_EDIT_STEPS)")
        # Latents are packed in 2x2 patches of VAE latents, so sides must be multiples of
        # twice the VAE's downsampling (16 for the real model, 32 for the tiny one).
        self._multiple = max(_SIZE_MULTIPLE, 2 * pipeline.vae_scale_factor)
        if size < self._multiple:
            raise ValueError(
                f"size must be at least {self._multiple} pixels, got {size} (EVALFLEET_EDIT_SIZE)"
            )
        self.pipeline = pipeline
        self.steps = steps
        self.size = size
        self.true_cfg_scale = true_cfg_scale
        self.negative_prompt = negative_prompt
        # Per-step progress bars would flood the worker logs.
        pipeline.set_progress_bar_config(disable=True)

    def edit(self, image: Image.Image, instruction: str, seed: int) -> Image.Image:
        """The edited image, about ``size`` x ``size`` pixels in the input's aspect ratio."""
        image = image.convert("RGB")
        width, height = self.output_size(image.width, image.height)
        generator = torch.Generator(device=self.pipeline.device).manual_seed(seed)
        # The pipeline only runs true classifier-free guidance when given a negative
        # prompt, and warns when given one it will not use.
        use_cfg = self.true_cfg_scale > 1
        with torch.inference_mode():
            result = self.pipeline(
                image=image,
                prompt=instruction,
                negative_prompt=self.negative_prompt if use_cfg else None,
                true_cfg_scale=self.true_cfg_scale,
                width=width,
                height=height,
                num_inference_steps=self.steps,
                generator=generator,
                output_type="pil",
            )
        return result.images[0]

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of about ``size**2`` pixels in the aspect ratio of ``width/height``."""
        ratio = width / height
        out_width = math.sqrt(self.size * self.size * ratio)
        out_height = out_width / ratio
        return self._round(out_width), self._round(out_height)

    def _round(self, side: float) -> int:
        return max(self._multiple, round(side / self._multiple) * self._multiple)

    def modules(self) -> dict[str, torch.nn.Module]:
        """The pipeline's weight-holding components, for moving between host and device."""
        return {
            "transformer": self.pipeline.transformer,
            "vae": self.pipeline.vae,
            "text_encoder": self.pipeline.text_encoder,
        }

    @staticmethod
    def seed_for(key: str) -> int:
        """A stable 31-bit seed for an item key, so rerunning the item reproduces its image."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


seed_for = Editor.seed_for
