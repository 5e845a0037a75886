"""A run's judge: the local Qwen3-VL judge over this worker's resident copy of the run's
judge model, or a client of the run's OpenAI-compatible endpoint."""

from __future__ import annotations

import functools

from config import Settings
from config.settings import JUDGE_ENDPOINT
from shared.editbench.run_settings import EditbenchRunSettings
from shared.messages import EDIT_STAGE
from workers.endpoints.client import endpoint_url
from workers.errors import PermanentError
from workers.judging.run_rubric import rubric_of
from workers.model_host import ModelHost
from workers.run_settings import run_dtype


def judge_for(host: ModelHost, run: EditbenchRunSettings):
    """The run's judge: one ``score(rows)`` per criterion row, JudgeScore or JudgeFailure each."""
    from workers.editing.factory import editor_model_name
    from workers.judging.judge import Judge
    from workers.models.loading import JUDGE_MODEL_SETTING, experts_implementation
    from workers.models.vlm import vlm

    store = host.store
    rubric = rubric_of(store.run_id, run).rubric
    if run.judge_backend == "endpoint":
        # No model and no device: the score phase of an endpoint judge needs no GPU.
        url = endpoint_url(run.judge_endpoint_url, host.settings.judge_endpoint_url, JUDGE_ENDPOINT)
        return _endpoint_judge(host.settings, url, run.judge_endpoint_model,
                               run.judge_endpoint_api_key_env, run.judge_endpoint_logprobs,
                               rubric.values, run.judge_reasoning_tokens, rubric.scoring == "stated")
    dtype = run_dtype(store.run_id, run.dtype, host.device)
    if store.stage_closed(EDIT_STAGE):
        # The phase controller says the run's last edit has finished: if the editor must
        # leave the device for the judge, drop it rather than pin a host copy of it.
        host.pool().retire(editor_model_name(run, dtype))
    loaded = vlm(host, run.judge_model, run.model_revision, dtype, JUDGE_MODEL_SETTING)
    store.add_judge_experts(experts_implementation(loaded.model))
    # The criteria of a pair go in one forward pass: the batch is pairs x criteria rows.
    return Judge(loaded.processor, loaded.model, batch_size=run.judge_batch_size * len(rubric.criteria),
                 values=rubric.values, reasoning_tokens=run.judge_reasoning_tokens,
                 stated=rubric.scoring == "stated")


@functools.lru_cache(maxsize=4)
def _endpoint_judge(settings: Settings, url: str, model: str, api_key_env: str, logprobs: bool,
                    values: tuple[int, ...], reasoning_tokens: int, stated: bool):
    """One client per endpoint and process (its connection pool is reused across tasks)."""
    from workers.judging.endpoint import EndpointJudge

    try:
        return EndpointJudge(url, model, api_key_env=api_key_env, logprobs=logprobs, values=values,
                             reasoning_tokens=reasoning_tokens, stated=stated,
                             concurrency=settings.judge_endpoint_concurrency,
                             timeout_seconds=settings.judge_endpoint_timeout_seconds,
                             max_retries=settings.judge_endpoint_max_retries)
    except KeyError as exc:
        raise PermanentError(str(exc.args[0])) from None
