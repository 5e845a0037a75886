"""The processor's inputs for each image's prefix, prepared on a host thread while the GPU works.

The image processor (resize, normalize, cut into patches) costs 10-50 ms of CPU per real-size
image. A task that packs 40 small images spent 0.5-2 s on it before its first prefill, the GPU
idle. Here one thread processes the images (the processor's tensor work and PIL let go of the
GIL) in the order the decoder will prefill them, so the decoder waits only for an image not
ready when it needs it. One thread is enough: an image's prefix prefill (~60 ms on an H200)
takes longer than processing it. One, not several, also because the processor's fast
tokenizer must not be called from two threads at once (it can fail with "Already borrowed").

The decoder sizes its prefix cache before any prefill, so it needs each prefix's token count
up front: ``prefix_tokens`` gets it from the image's size (the image processor's own count of
patches), without processing the pixels.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from PIL import Image
from transformers import ProcessorMixin

def prefix_tokens(processor: ProcessorMixin, image: Image.Image, prefix_text: str) -> int | None:
    """Tokens of ``prefix_text`` (one image placeholder) once the processor expands it for
    ``image``, or None where the processor cannot tell without processing the image."""
    image_processor = getattr(processor, "image_processor", None)
    count_patches = getattr(image_processor, "get_number_of_image_patches", None)
    image_token = getattr(processor, "image_token", None)
    if count_patches is None or image_token is None:
        return None
    patches = count_patches(image.height, image.width, {})
    merge = getattr(image_processor, "merge_size", 1) or 1
    ids = processor.tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
    placeholder = processor.tokenizer.convert_tokens_to_ids(image_token)
    if ids.count(placeholder) != 1:
        return None
    return len(ids) - 1 + patches // merge**2


class ImageInputs:
    """The processor's outputs for a call's images, made on a host thread as soon as the call
    starts, in the given order; ``take`` returns one (waiting if it is not ready). Use as a
    context manager: leaving it drops the images not processed yet."""

    def __init__(self, processor: ProcessorMixin, images: dict[int, Image.Image],
                 prefixes: dict[int, str]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="image-inputs")
        self._futures: dict[int, Future] = {
            index: self._pool.submit(_process, processor, image, prefixes[index])
            for index, image in images.items()}
        self.waited = 0.0  # seconds ``take`` spent waiting for the threads

    def tokens(self, index: int) -> int:
        """The prefix's token count, from the processed image (waits for it)."""
        return int(self._futures[index].result()["input_ids"].shape[1])

    def take(self, index: int) -> dict:
        started = time.perf_counter()
        result = self._futures.pop(index).result()
        self.waited += time.perf_counter() - started
        return result

    def __enter__(self) -> ImageInputs:
        return self

    def __exit__(self, *exc_info) -> None:
        # Waits for the image being processed, so no processor call outlives the decoder's.
        self._pool.shutdown(wait=True, cancel_futures=True)


def _process(processor: ProcessorMixin, image: Image.Image, prefix_text: str) -> dict:
    return processor(text=[prefix_text], images=[image], return_tensors="pt")
