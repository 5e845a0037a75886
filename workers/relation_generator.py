"""Batched prompt -> text generation with a Qwen3-VL-style model over one image."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin


class RelationGenerator:
    """Answers many prompts about one image, ``batch_size`` prompts per ``generate`` call.

    Works the same for the tiny CPU model and the real Qwen3-VL-8B on CUDA in bf16:
    inputs follow ``model.device`` and the model casts pixels to its own dtype.
    """

    def __init__(
        self,
        processor: ProcessorMixin,
        model: PreTrainedModel,
        *,
        batch_size: int,
        max_new_tokens: int,
        temperature: float,
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
        # Running total of tokens produced (eos included, padding not), for metrics.
        self.generated_tokens = 0
        # Batched generation appends on the right, so prompts must be padded on the left.
        self.processor.tokenizer.padding_side = "left"

    def generate(self, image: Image.Image, prompts: list[str], seed: int) -> list[str]:
        """One answer per prompt, in order. Greedy when temperature is 0, else seeded sampling."""
        texts = [self._render(prompt) for prompt in prompts]
        answers: list[str] = []
        for batch_index, start in enumerate(range(0, len(texts), self.batch_size)):
            batch = texts[start : start + self.batch_size]
            answers.extend(self._generate_batch(image, batch, seed + batch_index))
        return answers

    def _render(self, prompt: str) -> str:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _generate_batch(self, image: Image.Image, texts: list[str], seed: int) -> list[str]:
        inputs = self.processor(
            text=texts, images=[image] * len(texts), padding=True, return_tensors="pt"
        ).to(self.model.device)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **self._sampling_kwargs(seed))
        # generate returns prompt + continuation; with left padding every prompt ends at the same column.
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        self.generated_tokens += self._count_generated(new_tokens)
        decoded = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in decoded]

    def _sampling_kwargs(self, seed: int) -> dict:
        kwargs: dict = {"max_new_tokens": self.max_new_tokens}
        if self.temperature == 0:
            kwargs["do_sample"] = False
        else:
            # Sampling draws from torch's global RNG (all devices), so seeding it makes runs repeatable.
            torch.manual_seed(seed)
            kwargs.update(do_sample=True, temperature=self.temperature)
        return kwargs

    def _count_generated(self, new_tokens: torch.Tensor) -> int:
        """Tokens up to and including each row's first eos; the rest is padding."""
        eos = self.model.generation_config.eos_token_id
        eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos], device=new_tokens.device)
        is_eos = torch.isin(new_tokens, eos_ids)
        length = new_tokens.shape[1]
        first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, length)
        return int(first_eos.sum())
