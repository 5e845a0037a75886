"""What a model factory gets from the worker process it runs in: the run's store, the worker's
settings, its residency pool and the way a model becomes resident in it.

The factories (``workers.relations.factory``, ``workers.judging.factory``,
``workers.editing.factory``) sit below the tasks and never import the process's runtime: the
tasks hand them a ModelHost (``workers.runtime.model_host``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from config import Settings
from shared.store import RunStore

if TYPE_CHECKING:
    import torch

    from workers.residency import ResidencyPool

# A model's load function: (its handle, its modules by name, which the residency pool moves).
Load = Callable[[], tuple[Any, dict]]


@dataclass(frozen=True)
class ModelHost:
    store: RunStore
    settings: Settings  # this worker's own
    # The process's residency pool, made on the first call: an endpoint judge never makes it
    # (it needs no device).
    pool: Callable[[], "ResidencyPool"]
    # The handle of the model of a name, made resident (loaded or swapped in) with its load.
    resident: Callable[[str, Load], Any]

    @property
    def device(self) -> "torch.device":
        from workers.models.loading import pick_device

        return pick_device(self.settings.device)

    def load_kwargs(self, ref: str, kind: str, dtype: "torch.dtype") -> dict[str, Any]:
        """Weights load on the CPU in the run's dtype; the residency pool moves them."""
        import torch

        from workers.models.loading import resolve_model_path

        return {"ref": resolve_model_path(ref, self.settings.models_dir, kind=kind),
                "dtype": dtype, "device": torch.device("cpu")}


def model_name(kind: str, ref: str, revision: str, dtype: Any) -> str:
    """The residency pool's name for a model; revision and dtype are part of it, since two
    runs may ask for different ones of one model."""
    return f"{kind} {ref}" + (f"@{revision}" if revision else "") + f" {str(dtype).removeprefix('torch.')}"
