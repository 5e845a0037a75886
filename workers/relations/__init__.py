"""The relations decoder: ``generator`` turns a task's pairs into prompts for the paged engine
(``engine/``), which prefills each image's prefix once and decodes every prompt as a row of its
own over a paged KV cache; ``layers`` runs the model's decoder layers on the engine's
attention, ``decoding`` holds the shared pieces (prompt split, eos, sampling helpers) and
``image_inputs`` opens and processes the images beside the GPU; ``factory`` makes a run's
generator over the worker's resident model, or the ``endpoint`` backend's client. The slot
decoder that came before the paged engine is the benchmarks' baseline (bench/slot_decoder.py)."""
