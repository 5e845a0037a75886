"""The settings a relations run is registered with (``shared/run_settings.py`` says how they travel)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.run_settings import RunSettings, result


@dataclass(frozen=True, kw_only=True)
class RelationsRunSettings(RunSettings):
    # Operational: the latest registration's.
    batch_size: int
    max_batch: int = 512  # the decoder's batch (a run registered before it: 512)
    # The engine that decodes (both give the same greedy text, so it is not the run's identity).
    relations_engine: str = "slot"
    workers_per_gpu: int
    # These change the generated text: the run's identity.
    relations_model: str = result()
    model_revision: str = result("")
    dtype: str = result()
    top_k: int = result()
    max_new_tokens: int = result()
    temperature: float = result()
    seed: int = result()

