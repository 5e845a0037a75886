"""The paged relations engine (the relations job's decoder), drawn as a serving engine.

``engine`` runs a call as a loop: the ``scheduler`` (host only) plans a step, the
``model_runner`` runs it in one forward and samples, the scheduler takes the tokens back.
``kv_cache`` alone owns the keys and values: fixed-size blocks a row takes as it grows and
gives back when it ends, each image's prefix held once for all of its rows. ``attention``
reads them: a prefix part and a row part merged by log-sum-exp (on a GPU the row part is
``paged_attention``'s Triton kernel, reading each row's blocks in place). ``qwen3_vl`` holds what is
specific to the model family (prompt split, image prefix inputs, rope positions, layers, eos).
"""
