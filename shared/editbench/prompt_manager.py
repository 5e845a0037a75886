"""The judge's prompts: a default pair of templates plus optional per-category overrides.

``<prompts_dir>/default.system.txt`` and ``default.user.txt`` must exist. A category
may override either one with ``<category>.system.txt`` / ``<category>.user.txt``
(e.g. ``物理.system.txt``); each falls back to the default on its own.

Templates are ``str.format`` templates whose placeholders name a pair's values: ``{edit_instruction}``,
``{original_description}``, ``{category}``, ``{pair_id}``, ``{images}`` (which image the judge is
shown where: ``shared/editbench/judge_images.py``) and every field of the benchmark's record
(``{reference}``, ``{instruction_language}``...); write literal braces as ``{{`` and ``}}``. A line
naming a value the pair does not have (a benchmark without descriptions) is left out of the
prompt. Whether the records have a template's fields is checked when a run is registered
(``producer/editbench/register.py``). Pure Python, so the producer can import it without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from string import Formatter
from typing import Any, Mapping

from shared.errors import shown
from shared.files import MissingFile, UnreadableFile, read_utf8

DEFAULT_NAME = "default"
KINDS = ("system", "user")
# The values every pair has (original_description: where the benchmark gives one; images: when
# the judge is asked); the fields of its record come beside them.
PLACEHOLDERS = ("original_description", "edit_instruction", "category", "pair_id", "images")

# Most file systems cap a file name at 255 bytes; longer names cannot have an override.
_MAX_NAME_BYTES = 255


class PromptTemplateError(ValueError):
    """A template file exists but cannot be used (bad placeholder, bad encoding)."""


def read_templates(prompts_dir: Path) -> dict[str, str]:
    """Every template file of ``prompts_dir`` (file name -> text), each checked.

    What the producer stores with an editbench run: the workers score with these, not
    with whatever their own prompts directory holds.
    """
    templates = {}
    for path in sorted(Path(prompts_dir).glob("*.txt")):
        text = _load_template(path)
        if text is not None:
            templates[path.name] = text
    PromptManager(prompts_dir, templates)  # the defaults must be there
    return templates


class PromptManager:
    """Builds the judge's system and user prompts for a category; each file is read at most once.

    ``templates`` (file name -> text, from read_templates) are used instead of the files
    of ``prompts_dir`` when given; ``prompts_dir`` then only names them in messages.
    """

    def __init__(self, prompts_dir: Path, templates: dict[str, str] | None = None) -> None:
        self.prompts_dir = Path(prompts_dir)
        self._templates = templates
        # (name, kind) -> template text, or None when that file does not exist.
        self._cache: dict[tuple[str, str], str | None] = {}
        # Read the defaults now, so a broken install fails at start-up, not on the first item.
        for kind in KINDS:
            self._default(kind)

    def get_full_prompt(self, category: str, original_description: str | None, edit_instruction: str,
                        fields: Mapping[str, Any] | None = None) -> dict[str, str]:
        """``{"system_prompt": ..., "user_prompt": ...}`` for one benchmark pair, ``fields`` its
        record's (``pair_fields``); a line naming a value the pair lacks is left out."""
        values = {**(fields or {}), "category": category, "original_description": original_description,
                  "edit_instruction": edit_instruction}
        return {f"{kind}_prompt": filled(self.template(category, kind), values) for kind in KINDS}

    def template(self, category: str, kind: str) -> str:
        """The raw template the category uses for ``kind`` ("system" or "user")."""
        if kind not in KINDS:
            raise ValueError(f"prompt kind {kind!r}: use one of {', '.join(KINDS)}")
        override = self._read(category, kind) if is_safe_name(category) else None
        return override if override is not None else self._default(kind)

    def _default(self, kind: str) -> str:
        text = self._read(DEFAULT_NAME, kind)
        if text is None:
            path = self._path(DEFAULT_NAME, kind)
            raise FileNotFoundError(
                f"the default judge prompt {path} is missing: create it, or point "
                "EVALFLEET_PROMPTS_DIR at a directory with default.system.txt and default.user.txt"
            )
        return text

    def _read(self, name: str, kind: str) -> str | None:
        key = (name, kind)
        if key not in self._cache:
            path = self._path(name, kind)
            if self._templates is None:
                self._cache[key] = _load_template(path)
            else:
                text = self._templates.get(path.name)
                if text is not None:  # stored with the run, by a producer that may be older
                    _check_placeholders(path, text)
                self._cache[key] = text
        return self._cache[key]

    def _path(self, name: str, kind: str) -> Path:
        return self.prompts_dir / f"{name}.{kind}.txt"


def pair_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """The placeholder values of a stored pair beside its category, description and instruction:
    its record's fields and its pair id."""
    return {**item.get("fields", {}), "pair_id": item.get("pair_id")}


def placeholders(text: str) -> list[str]:
    """The names of a (checked) template's placeholders, in order."""
    return [name for _, name, _, _ in Formatter().parse(text) if name is not None]


def filled(template: str, values: Mapping[str, Any]) -> str:
    """``template`` with ``values`` in, each line naming a missing value left out."""
    shown_values = {k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
                    for k, v in values.items() if v is not None}
    kept = [line for line in template.split("\n")
            if all(name in shown_values for name in placeholders(line))]
    return "\n".join(kept).format(**shown_values)


def is_safe_name(category: str) -> bool:
    """Whether ``category`` can name a file inside the prompts directory and nothing else."""
    if not category or "/" in category or "\\" in category or ".." in category or "\0" in category:
        return False
    try:
        size = len(f"{category}.system.txt".encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: no file can have this name
        return False
    return size <= _MAX_NAME_BYTES


def _load_template(path: Path) -> str | None:
    try:
        text = read_utf8(path)
    except MissingFile:
        return None
    except UnreadableFile as exc:  # a directory, a FIFO, not UTF-8...
        raise PromptTemplateError(str(exc)) from None
    text = text.strip()
    _check_placeholders(path, text)
    return text


def _check_placeholders(path: Path, text: str) -> None:
    """Every placeholder is a plain name: ``{x.attr}``, ``{x[0]}``, ``{x!r}`` and ``{x:>{y}}``
    would let a template read Python internals of the values or reshape them."""
    # A bad template should fail when it is read, naming the file, not deep inside a task.
    hint = (f"the placeholders are {', '.join('{' + p + '}' for p in PLACEHOLDERS)} and the fields of "
            "the benchmark's records, plain names only (write literal braces as {{ and }})")
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in Formatter().parse(text)
                  if name is not None]
    except ValueError as err:
        raise PromptTemplateError(f"{path}: not a valid template ({err}); {hint}") from None
    for name, spec, conversion in fields:
        if not (name.isidentifier() and name.isascii()) or spec or conversion:
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise PromptTemplateError(f"{path}: placeholder {shown(written)} is not allowed; {hint}")
