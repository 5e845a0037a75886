"""The Celery tasks (top of the workers' layers): one base class for retries and failure
recording (``base``), the relations task and the editbench edit and score tasks."""
