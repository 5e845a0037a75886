"""The relations decoder: ``generator`` turns a task's pairs into prompts for the
``slot_decoder``, which prefills each image's prefix once and decodes every prompt in a row of
its own; attention over [prefix | row] is ``cascade_attention`` (prefix part, merge) and
``row_attention`` (the rows' Triton kernel); ``layers`` runs the model's decoder layers on
that attention, ``decoding`` holds the shared pieces (prompt split, eos, sampling helpers) and
``image_inputs`` opens and processes the images beside the GPU; ``factory`` makes a run's
generator over the worker's resident model. ``engine/`` is the paged engine, the other
choice of EVALFLEET_RELATIONS_ENGINE."""
