"""The jobs the producer runs, by the name the command line and a run's record give them."""

from __future__ import annotations

from producer.editbench.job import EditbenchJob
from producer.job import Job
from producer.relations.job import RelationsJob

JOBS: dict[str, Job] = {job.name: job for job in (RelationsJob(), EditbenchJob())}

