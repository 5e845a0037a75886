"""The decoding helpers on the tiny Qwen3-VL, and the benchmarks' static baseline against
``model.generate``."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from bench.static_decoder import ImagePromptDecoder, cut_after_eos
from workers.relations.decoding import eos_token_ids, length_bucket, pick_tokens, split_after_image

# Different lengths, so rows of a batch carry different numbers of left pads.
PROMPTS = [
    "Where is the cat relative to the table?",
    "这是一张图，请给出物体的相对位置关系",
    "hi",
    "Describe the spatial relation between the red car and the tall building on its left side.",
    "Is the person holding the cup?",
]
MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    # The tiny model's matmuls are microseconds; on a busy 2-core machine OpenMP's waits for a
    # second thread cost milliseconds each.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.linear_gradient("L").resize((256, 256)).convert("RGB")


@pytest.fixture(scope="module")
def texts(vlm) -> list[str]:
    return [_render(vlm[0], prompt) for prompt in PROMPTS]


def _render(processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _reference(vlm, image: Image.Image, texts: list[str]) -> list[list[int]]:
    """``model.generate`` on the full prompts, left-padded into one batch, greedy."""
    processor, model = vlm
    assert processor.tokenizer.padding_side == "left"
    inputs = processor(text=texts, images=[image] * len(texts), padding=True, return_tensors="pt")
    assert not inputs["attention_mask"].all(), "the prompts should need padding"
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return cut_after_eos(output[:, inputs["input_ids"].shape[1] :], eos_token_ids(model))


def test_splitting_after_the_image_tokenizes_like_the_whole_prompt(vlm, image, texts) -> None:
    processor = vlm[0]
    for text in texts:
        prefix, suffix = split_after_image(text)
        assert prefix + suffix == text and prefix.endswith("<|vision_end|>")
        whole = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        head = processor(text=[prefix], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        tail = processor.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        assert whole == head + tail
    with pytest.raises(ValueError, match="no <\\|vision_end\\|>"):
        split_after_image("a prompt without an image")


def test_pick_tokens_filters_like_top_k_and_top_p() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    best = logits.argmax(dim=-1)
    assert torch.equal(pick_tokens(logits, temperature=0), best)
    assert torch.equal(pick_tokens(logits, temperature=1.0, top_k=1), best)
    assert torch.equal(pick_tokens(logits, temperature=1.0, top_p=1e-6), best)
    top5 = logits.topk(5, dim=-1).indices
    for seed in range(20):
        drawn = pick_tokens(logits, temperature=2.0, top_k=5,
                            generator=torch.Generator().manual_seed(seed))
        assert (top5 == drawn[:, None]).any(dim=-1).all()


def test_cut_after_eos_keeps_the_first_eos_and_drops_the_padding() -> None:
    tokens = torch.tensor([[5, 9, 0, 0], [5, 6, 7, 8], [9, 9, 0, 0]])
    assert cut_after_eos(tokens, [9]) == [[5, 9], [5, 6, 7, 8], [9]]


def test_length_buckets_round_up_to_a_multiple_of_256() -> None:
    assert [length_bucket(tokens) for tokens in (1, 256, 257, 1300)] == [256, 256, 512, 1536]


def test_the_static_baseline_equals_generate(vlm, image, texts) -> None:
    # The benchmarks' baseline (bench/static_decoder.py) must make the tokens the product would:
    # batch 3 gives batches of 3 and 2 rows, a batch bucket that is not a power of two.
    decoder = ImagePromptDecoder(*vlm)
    rows = decoder.generate(image, texts, batch_size=3, max_new_tokens=MAX_NEW_TOKENS,
                            temperature=0.0, seed=0)
    assert rows == _reference(vlm, image, texts)
