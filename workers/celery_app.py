"""The Celery app: ``celery -A workers worker -Q relations --concurrency 2``.

Nothing here touches CUDA: models load lazily inside the prefork children, after
the fork, on their first task.
"""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger

from config import ignored_variables, load_settings
from config.celery import celery_config
from shared.redaction import add_settings_secrets, redact_logs

settings = load_settings()
add_settings_secrets(settings)
for _line in ignored_variables(settings):
    logging.getLogger(__name__).warning("%s", _line)

if settings.bench_token_budgets:
    # Runs take their budgets from their registration; said here too, so no fleet started with
    # the setting goes unnoticed (config/bench_token_budgets.py).
    logging.getLogger(__name__).warning(
        "EVALFLEET_BENCH_TOKEN_BUDGETS=%s is set: a setting for benchmarks only; relations runs "
        "registered with it are benchmark-shaped (descriptions end at drawn lengths)",
        settings.bench_token_budgets)

app = Celery("evalfleet", include=["workers.tasks.relations", "workers.tasks.editbench"])
app.conf.update(celery_config(settings))

if settings.visibility_timeout <= settings.task_hard_time_limit:
    # A task may then outlive its message's visibility: Redis hands it to a second worker.
    logging.getLogger(__name__).warning(
        "EVALFLEET_VISIBILITY_TIMEOUT (%d s) is not longer than a task's hard time limit (%d s): "
        "a long task will be executed twice (see README, Reliability)",
        settings.visibility_timeout, settings.task_hard_time_limit)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _redacting_logs(logger: logging.Logger, **_: object) -> None:
    """Every line the worker logs goes without the known secrets (shared/redaction.py)."""
    redact_logs(logger)
    redact_logs()
