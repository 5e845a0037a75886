"""The judges that score edited images: a local Qwen3-VL (``judge``) or an
OpenAI-compatible chat-completions endpoint (``endpoint``); ``factory`` makes the run's judge,
``run_rubric`` reads the rubric and prompts stored with the run."""
