"""Relation descriptions from an OpenAI-compatible chat-completions server (vLLM, SGLang, a
hosted model): no model and no device in the worker.

Each prompt is one chat completion: a user turn with the image first, as a data URL of the
image file's own bytes (not re-encoded), then the relation prompt's text as it is
(shared/relations/prompt.py), with the run's ``max_tokens``, ``temperature`` and a seed of
the pair's own. An image's requests are sent one after another, so a server's prefix cache
(vLLM keys it on the image's content hash, SGLang on a hash in the token ids) holds the
image's tokens while that image's prompts come. The answer is checked: a content filter's
refusal and an empty description fail the prompt; ``finish_reason`` ``length`` keeps the text
and flags it ``truncated``.
"""

from __future__ import annotations

import io
from concurrent.futures import Future, as_completed
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

from shared.files import UnreadableFile
from shared.images import ImageFileError
from workers.endpoints.client import Completion, EndpointClient, EndpointFailure, data_url
from workers.images import read_location

# finish_reason values (OpenAI's, which vLLM and SGLang send too).
LENGTH, CONTENT_FILTER = "length", "content_filter"


@dataclass(frozen=True)
class EndpointAnswer:
    """One prompt's outcome: its description (``truncated`` when cut at max_tokens), or why it
    failed; and how many attempts its request took."""

    text: str | None
    failure: str | None = None
    truncated: bool = False
    attempts: int = 1


class EndpointRelations:
    """The relation prompts of a task through ``client``, with the run's generation settings."""

    def __init__(self, client: EndpointClient, *, max_new_tokens: int, temperature: float) -> None:
        self.client = client
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature

    def image_problem(self, image: Image.Image) -> str | None:
        """None: the server decides which images it takes (a refusal fails that image's prompts)."""
        return None

    def request(self, image_url: str, prompt: str, seed: int) -> dict[str, Any]:
        """The chat-completions request of one prompt about one image."""
        return {"max_tokens": self.max_new_tokens, "temperature": self.temperature, "seed": seed,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": image_url}},
                    {"type": "text", "text": prompt}]}]}

    def describe(self, paths: list[str], prompts: list[list[str]], seeds: list[list[int]],
                 on_answer: Callable[[int, int, EndpointAnswer], None],
                 digests: list[str | None] | None = None) -> None:
        """Every prompt of every image (``paths``; ``digests``: the sha256 each object's content
        was registered with, where known), ``on_answer(image, index, answer)`` in this thread as
        each ends, in the order they end."""
        digests = digests or [None] * len(paths)
        sent: dict[Future[Completion], tuple[int, int]] = {}
        try:
            for image, (path, digest, image_prompts) in enumerate(zip(paths, digests, prompts)):
                try:
                    url = image_data_url(path, digest)
                except ValueError as exc:
                    for index in range(len(image_prompts)):
                        on_answer(image, index, EndpointAnswer(None, failure=str(exc), attempts=0))
                    continue
                for index, prompt in enumerate(image_prompts):
                    sent[self.client.submit(self.request(url, prompt, seeds[image][index]))] = (image, index)
            for future in as_completed(sent):
                on_answer(*sent[future], self._answer(future))
        finally:
            for future in sent:  # a task cut off: what has not gone out does not go
                future.cancel()

    def _answer(self, future: Future[Completion]) -> EndpointAnswer:
        try:
            completion = future.result()
        except EndpointFailure as exc:
            return EndpointAnswer(None, failure=str(exc), attempts=exc.attempts)
        problem, text, finish = _description(completion.response)
        if problem:
            return EndpointAnswer(None, failure=self.client.answer_problem(problem, completion.body),
                                  attempts=completion.attempts)
        return EndpointAnswer(text, truncated=finish == LENGTH, attempts=completion.attempts)


def _description(response: dict[str, Any]) -> tuple[str | None, str, str | None]:
    """(what keeps the answer from being a description, or None; its text; its finish_reason)."""
    choice = response["choices"][0]
    message = choice["message"]
    finish = choice.get("finish_reason")
    text = (message.get("content") or "").strip()
    if finish == CONTENT_FILTER or message.get("refusal"):
        return ("refused to describe it (finish_reason content_filter or a refusal: the server's content "
                "filter or the model declined; such pairs need another model or a filter that allows them)",
                text, finish)
    if not text:
        return (f"sent an empty description (finish_reason {finish!r}); if the model spends its tokens "
                "on reasoning first, raise EVALFLEET_MAX_NEW_TOKENS or turn its reasoning off", text, finish)
    return None, text, finish


def image_data_url(path: str, sha256: str | None = None) -> str:
    """The image's bytes (a file, or an object by URL: read as the task opened it, through the
    host's cache and checked against ``sha256``) as a data URL of its own type; ValueError if
    it cannot be read."""
    try:
        data = read_location(path, sha256)
    except UnreadableFile as exc:
        raise ValueError(f"image file {exc}") from None
    except ImageFileError as exc:
        raise ValueError(str(exc)) from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            mime_type = Image.MIME[image.format]
    except (OSError, KeyError):
        raise ValueError(f"image file {path} is not an image whose type a data URL can name") from None
    return data_url(data, mime_type)
