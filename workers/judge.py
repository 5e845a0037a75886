"""Scores edited images 0-10 with a Qwen3-VL judge, from its token probabilities.

No text is generated or parsed. For each (original, edited) pair the prompt is
rendered up to the assistant turn and the token "1" is appended (teacher forcing),
so one forward pass yields both distributions the score needs:

- at the position before "1": the first digit of the answer, P(d) for d in 0..9;
- at the last position (after "1"): q = P("0" | "1"), i.e. whether "1" goes on to "10".

Qwen tokenizers write numbers one digit per token, so "10" is "1" then "0":
P(10) = P("1") * q, P(1) = P("1") * (1 - q), P(d) = P(d) otherwise, and the score
is the expectation sum(s * P(s)), a float in [0, 10].
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

logger = logging.getLogger(__name__)

DIGITS = tuple(str(d) for d in range(10))
SCORES = tuple(range(11))  # 0..10


@dataclass
class JudgeItem:
    original_image: Image.Image
    edited_image: Image.Image
    system_prompt: str
    user_prompt: str


@dataclass
class JudgeScore:
    score: float
    probabilities: dict[str, float]  # "0".."10" -> probability; sums to 1


class Judge:
    """Scores ``batch_size`` image pairs per forward pass.

    Works the same for the tiny CPU model and a real Qwen3-VL on CUDA in bf16:
    inputs follow ``model.device`` and the softmax runs in float32.
    """

    def __init__(self, processor: ProcessorMixin, model: PreTrainedModel, *, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.processor = processor
        self.model = model
        self.batch_size = batch_size
        # Every row must end at the same column for the last two positions to be "before 1" and "after 1".
        self.processor.tokenizer.padding_side = "left"
        self.digit_ids = _digit_token_ids(processor.tokenizer)
        # Only the last two positions are read; skip projecting the rest onto the vocabulary.
        keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._forward_kwargs = {"logits_to_keep": 2} if keeps_logits else {}

    def modules(self) -> dict[str, torch.nn.Module]:
        """The modules a residency manager may move between devices."""
        return {"model": self.model}

    def score(self, items: list[JudgeItem]) -> list[JudgeScore]:
        """One score per item, in order."""
        scores: list[JudgeScore] = []
        for start in range(0, len(items), self.batch_size):
            scores.extend(self._score_batch(items[start : start + self.batch_size]))
        return scores

    def _render(self, item: JudgeItem) -> str:
        messages = [
            {"role": "system", "content": [{"type": "text", "text": item.system_prompt}]},
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "image"},
                    {"type": "text", "text": item.user_prompt},
                ],
            },
        ]
        prompt = self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return prompt + DIGITS[1]

    def _score_batch(self, items: list[JudgeItem]) -> list[JudgeScore]:
        texts = [self._render(item) for item in items]
        # The processor takes the images in the order their placeholders appear in the texts.
        images = [image for item in items for image in (item.original_image, item.edited_image)]
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        self._check_forced_token(inputs["input_ids"])
        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            output = self.model(**inputs, use_cache=False, **self._forward_kwargs)
        probabilities = self._score_probabilities(output.logits[:, -2:, :])
        return [_to_score(row) for row in probabilities.cpu()]

    def _check_forced_token(self, input_ids: torch.Tensor) -> None:
        # Right padding, or "1" merged into the template's last token, would make us read the wrong positions.
        if not bool((input_ids[:, -1] == self.digit_ids[1]).all()):
            raise RuntimeError(
                "the judge's inputs do not all end with the forced token '1': the tokenizer must "
                f"pad on the left (it pads on the {self.processor.tokenizer.padding_side}) and must "
                "not merge '1' with the end of the chat template's generation prompt"
            )

    def _score_probabilities(self, last_two: torch.Tensor) -> torch.Tensor:
        """(batch, 2, vocab) logits -> (batch, 11) probabilities of the scores 0..10, in float64."""
        last_two = last_two.float()  # bf16 logits would round the probabilities
        digit_ids = self.digit_ids.to(last_two.device)
        # Equal to the full-vocabulary softmax renormalised over the digits, but cannot underflow to 0/0.
        first = torch.softmax(last_two[:, 0, digit_ids], dim=-1)
        q = torch.softmax(last_two[:, 1, :], dim=-1)[:, digit_ids[0]]
        if logger.isEnabledFor(logging.DEBUG):
            digit_mass = torch.softmax(last_two[:, 0, :], dim=-1)[:, digit_ids].sum(dim=-1)
            logger.debug("judge: probability mass on digits %s", digit_mass.tolist())
        one = first[:, 1]
        scores = torch.cat(
            [first[:, :1], (one * (1 - q))[:, None], first[:, 2:], (one * q)[:, None]], dim=-1
        )
        return scores.double()


def _to_score(row: torch.Tensor) -> JudgeScore:
    probabilities = {str(s): float(p) for s, p in zip(SCORES, row.tolist())}
    expectation = sum(s * p for s, p in zip(SCORES, row.tolist()))
    # Rounding can leave it a hair outside the range.
    return JudgeScore(score=min(max(expectation, 0.0), 10.0), probabilities=probabilities)


def _digit_token_ids(tokenizer) -> torch.Tensor:
    """Token ids of "0".."9"; each digit must be exactly one token."""
    ids = []
    for digit in DIGITS:
        encoded = tokenizer.encode(digit, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"the judge's tokenizer encodes the digit {digit!r} as {len(encoded)} tokens "
                f"{encoded}; scoring needs one token per digit (as in Qwen tokenizers)"
            )
        ids.append(encoded[0])
    return torch.tensor(ids, dtype=torch.long)
