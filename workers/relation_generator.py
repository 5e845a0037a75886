"""Batched prompt -> text generation with a Qwen3-VL-style model over one image."""

from __future__ import annotations

from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from workers.image_prompt_decoder import shared_decoder


class RelationGenerator:
    """Answers many prompts about one image, ``batch_size`` prompts per decoded batch.

    Works the same for the tiny CPU model and the real Qwen3-VL-8B on CUDA in bf16: the image
    prefix is prefilled once per ``generate`` call and every batch decodes against a static
    cache (see workers/image_prompt_decoder.py), with the decode step in a CUDA graph on a GPU
    unless ``use_cuda_graph`` is False.
    """

    def __init__(
        self,
        processor: ProcessorMixin,
        model: PreTrainedModel,
        *,
        batch_size: int,
        max_new_tokens: int,
        temperature: float,
        use_cuda_graph: bool = True,
    ) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")
        if temperature < 0:
            raise ValueError("temperature must be >= 0 (0 means greedy decoding)")
        self.processor = processor
        self.model = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        # Kept with the model, so its CUDA graphs and static cache serve later tasks too.
        self.decoder = shared_decoder(processor, model, use_cuda_graph=use_cuda_graph)
        # Running total of tokens produced (eos included, padding not), for metrics.
        self.generated_tokens = 0

    def generate(self, image: Image.Image, prompts: list[str], seed: int) -> list[str]:
        """One answer per prompt, in order. Greedy when temperature is 0, else seeded sampling."""
        texts = [self._render(prompt) for prompt in prompts]
        rows = self.decoder.generate(
            image,
            texts,
            batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            seed=seed,
        )
        # Each row ends at its first eos, so its length is what was generated.
        self.generated_tokens += sum(len(row) for row in rows)
        decoded = self.processor.batch_decode(rows, skip_special_tokens=True)
        return [text.strip() for text in decoded]

    def _render(self, prompt: str) -> str:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
