"""The original relation-generation script (README, Baselines), re-implemented faithfully as a baseline (bench only).

Per pair, in batches of 8 predicates: the image is opened and processed again for every
batch, the prompts of one pair only share a ``generate`` call. Greedy decoding.
"""

from __future__ import annotations

import time

import torch
from PIL import Image

from shared.keys import relation_key
from shared.relations.prompt import build_relation_prompt


def seed_generate(processor, model, pairs: list[dict], max_new_tokens: int,
                  batch_size: int = 8) -> tuple[dict[tuple[str, str], str], float, float]:
    """{(pair key, predicate): text}, the seconds it took, and of those the CPU preprocessing.

    Runs on the CPU too (the tiny model, for smoke tests): CUDA is synchronized only on a GPU.
    """
    processor.tokenizer.padding_side = "left"
    out: dict[tuple[str, str], str] = {}
    preprocessing = 0.0
    on_gpu = model.device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for pair in pairs:
        key = relation_key(pair["image_id"], pair["subject"], pair["object"])
        tasks = pair["stage1_top_k"]
        for i in range(0, len(tasks), batch_size):
            batch = tasks[i:i + batch_size]
            t0 = time.perf_counter()
            image = Image.open(pair["image_path"]).convert("RGB")
            texts = [processor.apply_chat_template(
                [{"role": "user", "content": [
                    {"type": "image"},
                    {"type": "text", "text": build_relation_prompt(
                        pair["subject_obj"], pair["object_obj"], t["predicate"], image.width, image.height)},
                ]}], tokenize=False, add_generation_prompt=True) for t in batch]
            inputs = processor(text=texts, images=[image] * len(batch), padding=True,
                               return_tensors="pt").to(model.device)
            preprocessing += time.perf_counter() - t0
            with torch.inference_mode():
                ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            decoded = processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:],
                                             skip_special_tokens=True)
            for t, text in zip(batch, decoded):
                out[(key, t["predicate"])] = text.strip()
    if on_gpu:
        torch.cuda.synchronize()
    return out, time.perf_counter() - start, preprocessing
