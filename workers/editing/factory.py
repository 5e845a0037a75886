"""A run's editor, over this worker's resident copy of the run's edit pipeline and LoRAs."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from config import TINY_EDITORS
from shared.editbench.run_settings import EditbenchRunSettings
from workers.model_host import ModelHost, model_name
from workers.run_settings import run_dtype

if TYPE_CHECKING:
    from workers.editing.editor import Editor


def editor_for(host: ModelHost, run: EditbenchRunSettings) -> "Editor":
    """An editor with the run's settings (its family's defaults for those left at 0) over
    this process's copy of the run's edit pipeline and LoRAs."""
    from workers.editing.approximate import apply_approximate_modes
    from workers.editing.compile import compile_editor_transformer
    from workers.editing.editor import Editor, pipeline_modules
    from workers.editing.speed import speed_up_editor
    from workers.models.loading import EDITOR, load_image_edit_pipeline

    dtype = run_dtype(host.store.run_id, run.dtype, host.device)

    def load() -> tuple[Any, dict]:
        kwargs = host.load_kwargs(run.editor_model, EDITOR, dtype)
        device = host.device
        pipeline = load_image_edit_pipeline(kwargs.pop("ref"), revision=run.model_revision,
                                            loras=[asdict(lora) for lora in run.editor_loras], **kwargs)
        speed_up_editor(pipeline)
        # The run's approximate modes (none unless its command asked), before the compile.
        apply_approximate_modes(pipeline, run.edit_fp8, run.edit_step_cache, device)
        compile_editor_transformer(pipeline, host.settings, device)
        return pipeline, pipeline_modules(pipeline)

    pipeline = host.resident(editor_model_name(run, dtype), load)
    family = Editor.family_of(pipeline)
    # Not named settings: load() above reads this worker's settings.
    edit_settings = family.settings(steps=run.edit_steps, size=run.edit_size, guidance=run.edit_guidance,
                                    negative_prompt=run.edit_negative_prompt,
                                    tiny=run.editor_model in TINY_EDITORS)
    return Editor(pipeline, edit_settings)


def editor_model_name(run: EditbenchRunSettings, dtype: Any) -> str:
    """The residency pool's name for the run's editor: its LoRAs (by digest) are part of it,
    since runs with other LoRAs over one base need other weights."""
    loras = "".join(f" +lora {lora.digest[:12]}x{lora.scale:g}" for lora in run.editor_loras)
    # Approximate modes change the weights (FP8) or the hooks (step cache): another model.
    modes = "".join(f" +{mode}" for mode in run.approximate_modes)
    return model_name("editor", run.editor_model, run.model_revision, dtype) + loras + modes
