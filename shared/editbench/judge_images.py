"""Which images a criterion's judge is shown, in which order, and the sentence that names them.

A rubric's criterion lists its images (``"images"`` in ``rubric.json``; by default the pair's
input image(s), then the edit)::

    "images": ["inputs", "edited", {"field": "gt_img", "label": "GROUND-TRUTH image (a correct result)"}]

- ``original``: the pair's input image (the first, where it has several): the default's view;
- ``inputs``: every input image of the pair, in the record's order (KRIS's temporal frames);
- ``edited``: the edit being judged;
- ``{"field": name, "label": text}``: the image file(s) a record field names (KRIS's ``gt_img``,
  RISEBench's ``reference_img``), shown only for the pairs whose record has that field; read
  where the record's own images are, and stored with the run when it is registered.

The judge is told which image is which by the ``{images}`` placeholder of the templates: one
sentence per entry shown, in order ("The first image is the ORIGINAL image. The second image is
the EDITED image."), so the wording follows the images each pair really has.
Pure Python, so the producer can import it without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from shared.errors import shown

ORIGINAL = "original"
INPUTS = "inputs"
EDITED = "edited"
BUILT_IN = (ORIGINAL, INPUTS, EDITED)
DEFAULT_IMAGES = (ORIGINAL, EDITED)
# What the judge is told each built-in image is (one image, several images).
_BUILT_IN_LABELS = {ORIGINAL: ("ORIGINAL image", "ORIGINAL images"),
                    INPUTS: ("ORIGINAL image", "ORIGINAL images (the edit's inputs, in order)"),
                    EDITED: ("EDITED image", "EDITED images")}
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
LABEL_MAX = 200


@dataclass(frozen=True)
class ImageSource:
    """One entry of a criterion's images: ``original``, ``edited``, or a record field's image."""

    kind: str  # one of BUILT_IN, or "field"
    field: str = ""
    label: str = ""

    def describe(self) -> str | dict:
        return {"field": self.field, "label": self.label} if self.kind == "field" else self.kind

    def label_for(self, count: int) -> str:
        if self.kind == "field":
            return self.label
        one, several = _BUILT_IN_LABELS[self.kind]
        return one if count == 1 else several


DEFAULT_SOURCES = tuple(ImageSource(kind) for kind in DEFAULT_IMAGES)


def image_sources(where: str, raw: Any) -> tuple[ImageSource, ...]:
    """A criterion's ``images`` (see the module's docstring); ValueError names what is wrong."""
    if raw is None:
        return DEFAULT_SOURCES
    shape = (f"{where}: a list of \"{ORIGINAL}\", \"{INPUTS}\", \"{EDITED}\" and {{\"field\": a record "
             f"field, \"label\": what the judge is told it is}}, each once, one of the first three in it, "
             f"not {shown(raw)}")
    if not isinstance(raw, list) or not raw:
        raise ValueError(shape)
    sources = []
    for entry in raw:
        if entry in BUILT_IN:
            sources.append(ImageSource(entry))
        elif (isinstance(entry, dict) and set(entry) == {"field", "label"}
              and isinstance(entry["field"], str) and re.fullmatch(r"\w{1,64}", entry["field"])
              and isinstance(entry["label"], str) and entry["label"].strip() and len(entry["label"]) <= LABEL_MAX):
            sources.append(ImageSource("field", entry["field"], entry["label"].strip()))
        else:
            raise ValueError(shape)
    kinds = [s.kind for s in sources]
    if not set(BUILT_IN) & set(kinds) or len({(s.kind, s.field) for s in sources}) != len(sources):
        raise ValueError(shape)
    return tuple(sources)


def images_sentence(shown_groups: Sequence[tuple[str, int]]) -> str:
    """The ``{images}`` text: each (label, how many images) in the order shown."""
    sentences, first = [], 1
    for label, count in shown_groups:
        last = first + count - 1
        if count == 1:
            sentences.append(f"The {_ordinal(first)} image is the {label}.")
        else:
            sentences.append(f"The {_ordinal(first)} to {_ordinal(last)} images are the {label}.")
        first = last + 1
    return " ".join(sentences)


def _ordinal(n: int) -> str:
    return _ORDINALS[n - 1] if n <= len(_ORDINALS) else f"{n}th"
