"""Runs the paged engine with its Triton kernels under Triton's interpreter, on the CPU.

``TRITON_INTERPRET`` is read when a kernel is defined, so this runs in a process of its own
(tests/test_paged_engine.py starts it): python tests/interpreted_engine.py MODEL_DIR
REQUEST.json prints the generated tokens as JSON. The request names the images (files), the
rendered prompts per image, the budgets, the engine's block size and step budget, and
optionally an eos token and whether steps are planned ahead.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from workers.models import load_vlm  # noqa: E402
from workers.relations.engine.engine import PagedEngine  # noqa: E402


def main(model_dir: str, request_file: str) -> None:
    request = json.loads(open(request_file, encoding="utf-8").read())
    torch.set_num_threads(1)
    processor, model = load_vlm(model_dir, revision="", dtype=torch.float32,
                                device=torch.device("cpu"))
    if "eos" in request:
        model.generation_config.eos_token_id = [request["eos"]]
    engine = PagedEngine(processor, model, block_size=request["block_size"],
                         step_tokens=request["step_tokens"],
                         plan_ahead=request.get("plan_ahead", False))
    images = [Image.open(path).convert("RGB") for path in request["images"]]
    got = engine.generate(images, request["texts"], max_batch=request["max_batch"],
                          max_new_tokens=request["max_new_tokens"], temperature=0.0, seed=0)
    print(json.dumps({"tokens": got, "attention": engine.stats.attention}))


if __name__ == "__main__":
    main(*sys.argv[1:])
