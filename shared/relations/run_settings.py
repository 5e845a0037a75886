"""The settings a relations run is registered with (``shared/run_settings.py`` says how they travel)."""

from __future__ import annotations

from dataclasses import dataclass

from config.bench_token_budgets import TokenBudgets, parse_token_budgets
from shared.run_settings import RunSettings, result

# The relations job's one local decoder (workers/relations/engine/), as the report's summary
# ("engine") and the workers' log name it.
LOCAL_ENGINE = "paged"


@dataclass(frozen=True, kw_only=True)
class RelationsRunSettings(RunSettings):
    # Operational: the latest registration's.
    batch_size: int
    max_batch: int = 512  # the decoder's batch (a run registered before it: 512)
    # (Runs registered while the slot decoder was a choice also stored "relations_engine"; the
    # key is ignored now: the paged engine decodes every local run.)
    workers_per_gpu: int
    # Where the endpoint is (without its URL's password) and its key's variable: the latest
    # command's, as for the judge's endpoint.
    relations_endpoint_url: str = ""
    relations_endpoint_api_key_env: str = ""
    # These change the generated text: the run's identity. An endpoint run's text is the served
    # model's: relations_model, model_revision and dtype are "" there. The backend and the served
    # model are stored only when not local, so local runs keep the run ids they had.
    relations_backend: str = result("local", only_when_set=True)
    relations_endpoint_model: str = result("", only_when_set=True)
    relations_model: str = result()
    model_revision: str = result("")
    dtype: str = result()
    top_k: int = result()
    max_new_tokens: int = result()
    temperature: float = result()
    seed: int = result()
    # BENCHMARKS ONLY (config/bench_token_budgets.py): each prompt's drawn token budget, in the
    # setting's one spelling; "" in every real run. It cuts the text, so it is the run's identity.
    bench_token_budgets: str = result("", only_when_set=True)

    @property
    def endpoint(self) -> bool:
        """Whether an OpenAI-compatible server makes the descriptions (no model in the worker)."""
        return self.relations_backend == "endpoint"

    @property
    def token_budgets(self) -> TokenBudgets | None:
        """The benchmark-only token budgets the run was registered with, or None (a real run)."""
        return parse_token_budgets(self.bench_token_budgets)

    @property
    def model(self) -> str:
        """The model that makes the descriptions: the served one for an endpoint run."""
        return self.relations_endpoint_model if self.endpoint else self.relations_model
