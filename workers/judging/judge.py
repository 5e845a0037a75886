"""Scores edited images with a Qwen3-VL judge, from its token probabilities.

One row is one criterion of one pair (its images and its prompts). The prompt is rendered
up to the assistant turn and the token "1" is appended (teacher forcing), so one forward
pass yields both distributions a score needs:

- at the position before "1": the first digit of the answer, over the scale's first digits
  (0..9 for the 0-10 scale, 1..5 for 1-5);
- at the last position (after "1"): q = P("0" | "1"), i.e. whether "1" goes on to "10".

Qwen tokenizers write numbers one digit per token, so "10" is "1" then "0":
P(10) = P("1") * q, P(1) = P("1") * (1 - q), P(d) = P(d) otherwise, and the score
is the expectation sum(s * P(s)) over the scale (shared/editbench/judge_scores.py).

The reasoning mode (``reason``) first generates an answer (a rationale, then the score in
the documented format), then reads the score where the answer states it: one forward over
prompt + the answer up to the score + "1" gives the same two distributions there.

With ``stated`` (a rubric whose scoring is ``stated``) the judge answers greedily (the integer
alone, or a rationale then the score in the reasoning mode) and its score is the integer the
answer states; an answer that states none is a JudgeFailure with the answer attached.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from shared.editbench.judge_scores import (FROM_LOGITS, SCORE_MODE_TOKENS, JudgeFailure, JudgeScore, expectation,
                                 find_stated_score, first_digits, stated_score, unreadable)

logger = logging.getLogger(__name__)

DIGITS = tuple(str(d) for d in range(10))
SCALE_0_10 = tuple(range(11))


@dataclass
class JudgeImage:
    label: str  # what the prompt calls it ("ORIGINAL image")
    image: Image.Image


@dataclass
class JudgeItem:
    """One row: the images the judge is shown, in the order the prompt names them, and its prompts."""

    images: list[JudgeImage]
    system_prompt: str
    user_prompt: str

    @classmethod
    def of_pair(cls, original: Image.Image, edited: Image.Image, system_prompt: str, user_prompt: str) -> "JudgeItem":
        """The default row: the original image, then the edit."""
        return cls([JudgeImage("ORIGINAL image", original), JudgeImage("EDITED image", edited)],
                   system_prompt, user_prompt)


class Judge:
    """Scores ``batch_size`` rows per forward pass, each on the scale ``values``.

    Works the same for the tiny CPU model and a real Qwen3-VL on CUDA in bf16:
    inputs follow ``model.device`` and the softmax runs in float32.
    """

    def __init__(self, processor: ProcessorMixin, model: PreTrainedModel, *, batch_size: int,
                 values: tuple[int, ...] = SCALE_0_10, reasoning_tokens: int = 0,
                 stated: bool = False) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not values or min(values) < 0 or max(values) > 10:
            raise ValueError(f"the judge reads scales within 0..10, not {values}")
        self.processor = processor
        self.model = model
        self.batch_size = batch_size
        self.values = tuple(values)
        # 0: score the answer's first token; else generate up to this many tokens first.
        self.reasoning_tokens = reasoning_tokens
        self.stated = stated
        # Every row must end at the same column for the last two positions to be "before 1" and "after 1".
        self.processor.tokenizer.padding_side = "left"
        self.digit_ids = _digit_token_ids(processor.tokenizer)
        # The digits a value of the scale starts with, as indices into digit_ids.
        self._first = torch.tensor([int(d) for d in first_digits(self.values)], dtype=torch.long)
        # Only the last two positions are read; skip projecting the rest onto the vocabulary.
        parameters = inspect.signature(model.forward).parameters
        self._forward_kwargs = {"logits_to_keep": 2} if "logits_to_keep" in parameters else {}
        # Qwen3-VL takes the vision tower's outputs in place of pixels (transformers >= 5.x).
        self._takes_encoded_images = ("mm_encoder_outputs" in parameters
                                      and hasattr(getattr(model, "model", None), "get_image_features"))

    def modules(self) -> dict[str, torch.nn.Module]:
        """The modules a residency manager may move between devices."""
        return {"model": self.model}

    def score(self, items: list[JudgeItem]) -> list[JudgeScore | JudgeFailure]:
        """One result per item, in order. In the reasoning mode each row's answer is generated
        first (greedy, at most ``reasoning_tokens``) and scored where it states its score; a
        row whose answer states none is a JudgeFailure with the answer attached."""
        scores: list[JudgeScore | JudgeFailure] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            if self.stated:
                scores.extend(self.stated_scores(batch))
            elif self.reasoning_tokens:
                scores.extend(self.score_answers(batch, self._generate(batch, self.reasoning_tokens)))
            else:
                scores.extend(self._score_batch(batch))
        return scores

    def stated_scores(self, items: list[JudgeItem]) -> list[JudgeScore | JudgeFailure]:
        """Each row's greedy answer read for the integer it states (stated scoring)."""
        answers = self._generate(items, self.reasoning_tokens or SCORE_MODE_TOKENS)
        return [stated_score(answer, self.values, answer if self.reasoning_tokens else None)
                for answer in answers]

    def score_answers(self, items: list[JudgeItem], answers: list[str]) -> list[JudgeScore | JudgeFailure]:
        """Each row's score at the place its ``answer`` states it (teacher-forced), or a failure."""
        results: list[JudgeScore | JudgeFailure | None] = [None] * len(items)
        readable = []
        for i, (item, answer) in enumerate(zip(items, answers, strict=True)):
            stated = find_stated_score(answer, self.values)
            if stated is None:
                results[i] = JudgeFailure(unreadable(answer, self.values))
            else:
                readable.append((i, self._prompt(item) + answer[: stated.start] + DIGITS[1]))
        for start in range(0, len(readable), self.batch_size):
            chunk = readable[start : start + self.batch_size]
            scores = self._score_texts([items[i] for i, _ in chunk], [text for _, text in chunk])
            for (i, _), score in zip(chunk, scores):
                score.rationale = answers[i]
                results[i] = score
        return results  # type: ignore[return-value]

    def _generate(self, items: list[JudgeItem], max_new_tokens: int) -> list[str]:
        inputs = self._inputs(items, [self._prompt(item) for item in items])
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = output[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)

    def _render(self, item: JudgeItem) -> str:
        return self._prompt(item) + DIGITS[1]

    def _prompt(self, item: JudgeItem) -> str:
        """The chat up to the assistant's answer."""
        messages = [
            {"role": "system", "content": [{"type": "text", "text": item.system_prompt}]},
            {
                "role": "user",
                "content": [*({"type": "image"} for _ in item.images),
                            {"type": "text", "text": item.user_prompt}],
            },
        ]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _score_batch(self, items: list[JudgeItem]) -> list[JudgeScore]:
        return self._score_texts(items, [self._render(item) for item in items])

    def _inputs(self, items: list[JudgeItem], texts: list[str]):
        # The processor takes the images in the order their placeholders appear in the texts.
        images = [shown.image for item in items for shown in item.images]
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        return inputs.to(self.model.device)

    def _score_texts(self, items: list[JudgeItem], texts: list[str]) -> list[JudgeScore]:
        """Scores of rows whose texts end with the forced "1" (see the module's docstring)."""
        inputs = self._inputs(items, texts)
        self._check_forced_token(inputs["input_ids"])
        with torch.inference_mode():
            inputs = self._images_encoded_once(items, inputs)
            output = self.model(**inputs, use_cache=False, **self._forward_kwargs)
        probabilities = self._score_probabilities(output.logits[:, -2:, :])
        return [self._to_score(row) for row in probabilities.cpu()]

    def _images_encoded_once(self, items: list[JudgeItem], inputs) -> dict:
        """``inputs`` with each distinct image of the batch through the vision tower once.

        The criteria of a pair are rows showing the same images; without this the vision
        tower would encode them once per criterion. The encoder's outputs (embeddings and
        deepstack features) go to the model in place of the pixels, one entry per placeholder.
        """
        images = [shown.image for item in items for shown in item.images]
        first: dict[int, int] = {}
        sources = [first.setdefault(id(image), index) for index, image in enumerate(images)]
        if len(first) == len(images) or not self._takes_encoded_images:
            return inputs
        grid = inputs["image_grid_thw"]
        pixels = torch.split(inputs["pixel_values"], grid.prod(-1).tolist())
        distinct = list(first.values())  # first occurrences, in order
        encoded = self.model.model.get_image_features(
            torch.cat([pixels[i] for i in distinct]), grid[distinct], return_dict=True)
        position = {index: n for n, index in enumerate(distinct)}
        picks = [position[source] for source in sources]
        encoded.pooler_output = [encoded.pooler_output[p] for p in picks]
        encoded.deepstack_features = [[layer[p] for p in picks]
                                      for layer in encoded.deepstack_features]
        shared = {key: value for key, value in inputs.items() if key != "pixel_values"}
        shared["mm_encoder_outputs"] = {"image": encoded}
        return shared

    def _check_forced_token(self, input_ids: torch.Tensor) -> None:
        # Right padding, or "1" merged into the template's last token, would make us read the wrong positions.
        if not bool((input_ids[:, -1].cpu() == self.digit_ids[1]).all()):
            raise RuntimeError(
                "the judge's inputs do not all end with the forced token '1': the tokenizer must "
                f"pad on the left (it pads on the {self.processor.tokenizer.padding_side}) and must "
                "not merge '1' with the end of the chat template's generation prompt"
            )

    def _score_probabilities(self, last_two: torch.Tensor) -> torch.Tensor:
        """(batch, 2, vocab) logits -> (batch, len(values)) probabilities of the scale's values, in float64."""
        last_two = last_two.float()  # bf16 logits would round the probabilities
        digit_ids = self.digit_ids.to(last_two.device)
        first_ids = digit_ids[self._first.to(last_two.device)]
        # Equal to the full-vocabulary softmax renormalised over the scale's first digits,
        # but cannot underflow to 0/0.
        first = torch.softmax(last_two[:, 0, first_ids], dim=-1)
        if logger.isEnabledFor(logging.DEBUG):
            digit_mass = torch.softmax(last_two[:, 0, :], dim=-1)[:, first_ids].sum(dim=-1)
            logger.debug("judge: probability mass on the scale's digits %s", digit_mass.tolist())
        column = {int(d): first[:, i] for i, d in enumerate(self._first.tolist())}
        columns = []
        if 10 in self.values:
            q = torch.softmax(last_two[:, 1, :], dim=-1)[:, digit_ids[0]]
            one = column[1]
            column[1], column[10] = one * (1 - q), one * q
        for value in self.values:
            columns.append(column[value])
        return torch.stack(columns, dim=-1).double()

    def _to_score(self, row: torch.Tensor) -> JudgeScore:
        probabilities = {str(s): float(p) for s, p in zip(self.values, row.tolist())}
        return JudgeScore(score=expectation(probabilities, self.values), probabilities=probabilities,
                          source=FROM_LOGITS)


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
