"""A run's editor, over this worker's resident copy of the run's edit pipeline and LoRAs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from config import TINY_EDITORS
from shared.editbench.approximate import approximate_modes
from workers.model_host import ModelHost, model_name
from workers.run_settings import run_dtype, run_setting

if TYPE_CHECKING:
    from workers.editing.editor import Editor


def editor_for(host: ModelHost) -> "Editor":
    """An editor with the run's settings (its family's defaults for those left at 0) over
    this process's copy of the run's edit pipeline and LoRAs."""
    from workers.editing.approximate import apply_approximate_modes
    from workers.editing.compile import compile_editor_transformer
    from workers.editing.editor import Editor, pipeline_modules
    from workers.editing.speed import speed_up_editor
    from workers.models.loading import EDITOR, load_image_edit_pipeline

    store = host.store
    meta = store.meta()
    ref, revision = meta["editor_model"], meta.get("model_revision", "")
    dtype = run_dtype(store, meta, host.device)
    loras = run_setting(store, meta, "editor_loras")

    def load() -> tuple[Any, dict]:
        kwargs = host.load_kwargs(ref, EDITOR, dtype)
        device = host.device
        pipeline = load_image_edit_pipeline(kwargs.pop("ref"), revision=revision, loras=loras, **kwargs)
        speed_up_editor(pipeline)
        # The run's approximate modes (none unless its command asked), before the compile.
        apply_approximate_modes(pipeline, bool(meta.get("edit_fp8", False)),
                                float(meta.get("edit_step_cache", 0.0)), device)
        compile_editor_transformer(pipeline, host.settings, device)
        return pipeline, pipeline_modules(pipeline)

    pipeline = host.resident(editor_model_name(meta, dtype), load)
    family = Editor.family_of(pipeline)
    # Not named settings: load() above reads this worker's settings.
    edit_settings = family.settings(steps=int(meta["edit_steps"]), size=int(meta["edit_size"]),
                                    guidance=float(run_setting(store, meta, "edit_guidance")),
                                    negative_prompt=meta["edit_negative_prompt"],
                                    tiny=ref in TINY_EDITORS)
    return Editor(pipeline, edit_settings)


def editor_model_name(meta: dict[str, Any], dtype: Any) -> str:
    """The residency pool's name for the run's editor: its LoRAs (by digest) are part of it,
    since runs with other LoRAs over one base need other weights."""
    loras = "".join(f" +lora {lora['digest'][:12]}x{lora['scale']:g}" for lora in meta.get("editor_loras", []))
    # Approximate modes change the weights (FP8) or the hooks (step cache): another model.
    modes = "".join(f" +{mode}" for mode in approximate_modes(meta))
    return model_name("editor", meta["editor_model"], meta.get("model_revision", ""), dtype) + loras + modes
