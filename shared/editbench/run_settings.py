"""The settings an editbench run is registered with (``shared/run_settings.py`` says how they travel)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.editbench.approximate import approximate_modes
from shared.run_settings import RunSettings, result


@dataclass(frozen=True)
class EditorLora:
    """A LoRA on top of the editor: by absolute path, scale and content digest (a LoRA changed
    on disk makes another run, like another model would)."""

    path: str
    scale: float
    digest: str


@dataclass(frozen=True, kw_only=True)
class EditbenchRunSettings(RunSettings):
    # Operational: the latest registration's.
    judge_batch_size: int
    workers_per_gpu: int
    prompts_dir: str = ""  # the producer's prompts folder (the templates below are what counts)
    prompt_templates: dict[str, str]  # the files of the judge's rubric, by name
    judge_endpoint_url: str
    judge_endpoint_api_key_env: str = ""
    # These change edited images or scores: the run's identity. Edit settings are the ones
    # asked for (0: the editor family's default, which the workers apply).
    editor_model: str = result()
    editor_loras: tuple[EditorLora, ...] = result()
    judge_model: str = result()
    model_revision: str = result("")
    dtype: str = result()
    edit_steps: int = result()
    edit_size: int = result()
    edit_guidance: float = result()
    edit_negative_prompt: str = result()
    seed: int = result()
    judge_rubric: str = result()
    prompts: str = result()  # the digest of prompt_templates
    judge_mode: str = result()
    judge_reasoning_tokens: int = result()  # 0 unless the judge_mode is reasoning
    judge_backend: str = result()
    # The served model and its logprobs change scores; where it is served does not.
    judge_endpoint_model: str = result()  # "" unless the judge_backend is endpoint
    judge_endpoint_logprobs: bool = result()
    # The approximate edit modes: stored only when on, so exact runs keep their run ids.
    edit_fp8: bool = result(False, only_when_set=True)
    edit_step_cache: float = result(0.0, only_when_set=True)

    @property
    def approximate_modes(self) -> list[str]:
        """Names of the approximate edit modes the run is made with: [] for exact edits."""
        return approximate_modes(self.record())
