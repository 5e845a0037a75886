"""Batched prompt -> text generation with a Qwen3-VL-style model over several images."""

from __future__ import annotations

import logging
from typing import Callable

from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from workers.relations.decoding import split_after_image
from workers.relations.engine.engine import PagedEngine
from workers.relations.image_inputs import prefix_tokens

logger = logging.getLogger(__name__)

# The decoder every generator uses. The benchmarks' worker for the baseline
# (bench/slot_worker.py) sets another with the same interface.
DECODER = PagedEngine
# Where a model object keeps its decoder between tasks.
_DECODER_ATTRIBUTE = "_evalfleet_decoder"


class RelationGenerator:
    """Answers many prompts about several images.

    Works the same for the tiny CPU model and the real Qwen3-VL-8B on CUDA in bf16. The paged
    engine (workers/relations/engine/) prefills and stores each image's prefix once and decodes
    up to ``max_batch`` rows at once, across images (fewer when their cache would not fit
    ``cache_bytes``).
    """

    def __init__(
        self,
        processor: ProcessorMixin,
        model: PreTrainedModel,
        *,
        max_new_tokens: int,
        temperature: float,
        max_batch: int = 512,
        cache_bytes: int | None = None,
    ) -> None:
        if max_new_tokens < 1 or max_batch < 1:
            raise ValueError("max_batch and max_new_tokens must be at least 1")
        if temperature < 0:
            raise ValueError("temperature must be >= 0 (0 means greedy decoding)")
        self.processor = processor
        self.model = model
        self.max_batch = max_batch
        self.cache_bytes = cache_bytes
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        # Kept with the model, so its CUDA graphs and caches serve later tasks too.
        self.decoder = shared_decoder(processor, model)
        # Running total of tokens produced (eos included, padding not), for metrics.
        self.generated_tokens = 0

    def generate(self, image: Image.Image, prompts: list[str], seed: int) -> list[str]:
        """One answer per prompt about one image, in order."""
        return self.generate_many([image], [prompts], seed=seed)[0]

    def generate_many(self, images: list[Image.Image], prompts: list[list[str]], seed: int,
                      on_answer: Callable[[int, int, str], None] | None = None,
                      budgets: list[list[int]] | None = None) -> list[list[str]]:
        """One answer per prompt of every image, in order. Greedy at temperature 0, else seeded
        sampling. ``on_answer(image, index, text)`` is called for each prompt as soon as its
        answer ends: the caller can store what is finished while the rest decodes. ``budgets``:
        each prompt's own token budget (the benchmarks' drawn lengths), instead of max_new_tokens."""
        texts = [[self._render(prompt) for prompt in group] for group in prompts]
        answers: list[list[str]] = [[""] * len(group) for group in prompts]

        def answered(image: int, index: int, tokens: list[int]) -> None:
            # Each row ends at its first eos, so its length is what was generated.
            self.generated_tokens += len(tokens)
            answers[image][index] = self.processor.decode(tokens, skip_special_tokens=True).strip()
            if on_answer is not None:
                on_answer(image, index, answers[image][index])

        self.decoder.generate(
            images, texts, max_batch=self.max_batch, cache_bytes=self.cache_bytes,
            max_new_tokens=self.max_new_tokens if budgets is None else budgets,
            temperature=self.temperature, seed=seed, on_done=answered)
        stats = self.decoder.stats
        phases = ", ".join(f"{name} {seconds:.2f}" for name, seconds in stats.phases.items())
        logger.info("%s engine decoded %d prompts of %d images in %.2fs (%s): %d rows, %d steps, "
                    "occupancy %.2f, %d prefixes", self.decoder.name, sum(len(group) for group in prompts),
                    len(images), stats.seconds, phases, stats.rows, stats.steps, stats.occupancy,
                    stats.prefills)
        return answers

    def image_problem(self, image: Image.Image) -> str | None:
        """Why the processor would refuse ``image`` (an aspect ratio beyond its limit...), or
        None. Asked before generation, so a bad image fails its own pairs, not those of the
        images it shares a task with."""
        prefix = split_after_image(self._render(""))[0]
        try:
            if prefix_tokens(self.processor, image, prefix) is None:  # cannot tell from the size
                self.processor(text=[prefix], images=[image], return_tensors="pt")
        except ValueError as exc:
            return f"the model's processor refuses it: {exc}"
        return None

    def _render(self, prompt: str) -> str:
        return render_prompt(self.processor, prompt)


def shared_decoder(processor: ProcessorMixin, model: PreTrainedModel) -> PagedEngine:
    """The model's decoder, made on first use and kept on the model object.

    A generator is made per task; keeping the decoder with the model lets its captured graphs
    and caches serve every later task of the process instead of being redone.
    """
    decoder = getattr(model, _DECODER_ATTRIBUTE, None)
    if type(decoder) is not DECODER or decoder.processor is not processor:
        if decoder is not None:
            decoder.release()
        decoder = DECODER(processor, model)
        setattr(model, _DECODER_ATTRIBUTE, decoder)
    return decoder


def render_prompt(processor: ProcessorMixin, prompt: str) -> str:
    """The chat text of one question about one image, ready for generation."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
