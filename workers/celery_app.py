"""The Celery app: ``celery -A workers worker -Q relations --concurrency 2``.

Nothing here touches CUDA: models load lazily inside the prefork children, after
the fork, on their first task.
"""

from __future__ import annotations

from celery import Celery

from config import load_settings
from config.celery import celery_config

settings = load_settings()

app = Celery("evalfleet", include=["workers.relations_task", "workers.editbench_tasks"])
app.conf.update(celery_config(settings))
