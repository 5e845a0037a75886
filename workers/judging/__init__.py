"""The judges that score edited images: a local Qwen3-VL (``judge``) or an
OpenAI-compatible chat-completions endpoint (``endpoint``)."""
