"""Text from the inputs must reach a model as text.

A tokenizer turns the string of one of its special tokens (``<|image_pad|>``,
``<|im_end|>``, ``<|vision_start|>``) into that token, not into characters: inside a
description it breaks the prompt's structure (the processor counts image tokens and
refuses the whole batch). Such strings are refused where the input is prepared, naming
the record and the field. Qwen's special tokens all have the ``<|name|>`` form.
"""

from __future__ import annotations

import re

SPECIAL_TOKEN = re.compile(r"<\|[^<>|\s]{1,64}\|>")


def special_token_problem(text: str) -> str | None:
    """Why ``text`` cannot be given to the model as text, or None."""
    found = SPECIAL_TOKEN.search(text)
    if found is None:
        return None
    return (f"contains {found.group()!r}, which the model's tokenizer reads as a special token, "
            f"not as text: remove or rephrase it")
