"""Sending tasks by name: the producer shares the workers' Celery settings, not their code."""

from __future__ import annotations

from celery import Celery

from config import Settings
from config.celery import celery_config


def celery_client(settings: Settings) -> Celery:
    app = Celery("evalfleet-producer")
    app.conf.update(celery_config(settings))
    return app

