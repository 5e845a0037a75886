"""The image editor: a diffusers edit pipeline behind one call (``editor``), its compiled
transformer (``compile``) and the LoRAs merged into it (``loras``); ``factory`` makes the run's
editor over the worker's resident pipeline."""
