"""LoRA checkpoints on top of an edit pipeline: loaded, checked to match, weighted.

diffusers loads a LoRA with ``load_lora_weights`` and only *warns* about what does not
fit: tensors naming layers the pipeline lacks are skipped, and a LoRA with no tensor
for any of the pipeline's components is skipped whole. An edit made that way would be
scored as the LoRA's, so every layer the LoRA names is checked to carry it after the
load; a LoRA that does not match raises LoraMismatchError naming the LoRA and what
did not match.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.keys import content_digest

log = logging.getLogger(__name__)

# The LoRA layers of a diffusers state dict: <component>.<module path>.lora_A.weight.
_LORA_DOWN = ".lora_A."
# How many unmatched layers an error message names.
_SHOWN = 3


class LoraMismatchError(ValueError):
    """A LoRA cannot be applied to the editor: other layers or other shapes, or changed."""


def apply_loras(pipeline: Any, loras: Sequence[dict[str, Any]], editor: str) -> None:
    """Load each LoRA (``{"path", "scale", "digest"}``, as the run recorded it) into the
    pipeline as adapter ``lora<i>`` and weight them with their scales."""
    if not loras:
        return
    if not hasattr(pipeline, "load_lora_weights"):
        raise LoraMismatchError(f"the editor {editor!r} ({type(pipeline).__name__}) takes no LoRA")
    names = []
    for number, lora in enumerate(loras):
        _check_unchanged(lora)
        names.append(f"lora{number}")
        _load_one(pipeline, Path(lora["path"]), names[-1], editor)
    pipeline.set_adapters(names, adapter_weights=[float(lora["scale"]) for lora in loras])
    log.info("editor %s: LoRAs %s", editor,
             ", ".join(f"{lora['path']} x{lora['scale']}" for lora in loras))


def _check_unchanged(lora: dict[str, Any]) -> None:
    # The run's identity holds the LoRA's digest: a file changed since would make its
    # edits another run's.
    path = Path(lora["path"])
    try:
        digest = content_digest(path)
    except OSError as exc:
        raise LoraMismatchError(f"LoRA {path}: cannot be read ({exc.strerror or exc})") from None
    if digest != lora["digest"]:
        raise LoraMismatchError(f"LoRA {path} changed since the run was registered (digest "
                                f"{digest[:16]}, registered {lora['digest'][:16]}): start the "
                                "run over with --restart, or use another --run name")


def _load_one(pipeline: Any, path: Path, name: str, editor: str) -> None:
    what = f"LoRA {path} does not match the editor {editor!r} ({type(pipeline).__name__})"
    try:
        expected = _lora_layers(pipeline.lora_state_dict(str(path)))
        pipeline.load_lora_weights(str(path), adapter_name=name)
    except (ValueError, RuntimeError, KeyError) as exc:
        # Shapes of another model (size mismatch), a file that is no LoRA, ...
        raise LoraMismatchError(f"{what}: {_first_lines(exc)}") from None
    if not expected:
        raise LoraMismatchError(f"{what}: it holds no LoRA layer (no '*{_LORA_DOWN}weight' tensor)")
    missing = [layer for layer in expected if not _carries(pipeline, layer, name)]
    if missing:
        shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
        raise LoraMismatchError(f"{what}: {len(missing)} of its {len(expected)} layers are not "
                                f"layers of the editor ({shown})")


def _first_lines(exc: BaseException) -> str:
    """The error's headline, with its first detail when the headline announces a list
    (torch's "Error(s) in loading state_dict for ...:" then one line per tensor)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return f"{lines[0]} {lines[1]}{more}"
    return lines[0]


def _lora_layers(loaded: Any) -> list[str]:
    """The layers (``component.module.path``) a diffusers-format LoRA state dict adapts."""
    state = loaded[0] if isinstance(loaded, tuple) else loaded  # some families add alphas
    return sorted({key.split(_LORA_DOWN)[0] for key in state if _LORA_DOWN in key})


def _carries(pipeline: Any, layer: str, adapter: str) -> bool:
    component_name, _, module_path = layer.partition(".")
    component = getattr(pipeline, component_name, None)
    if component is None or not module_path:
        return False
    try:
        module = component.get_submodule(module_path)
    except AttributeError:
        return False
    return adapter in getattr(module, "lora_A", {})
