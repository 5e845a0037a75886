"""OpenAI-compatible chat-completions endpoints (vLLM, SGLang, a hosted model), as the judge and
the relations job use them: ``client`` (one endpoint of a run: its key, its failures' reasons),
``chat_requests`` (bounded, retried requests), ``chat_completion`` (what an answer must be)."""
