"""The image-prompt decoder on the tiny Qwen3-VL: the same tokens as ``model.generate``, faster."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from workers.image_prompt_decoder import (
    EOS_CHECK_EVERY,
    ImagePromptDecoder,
    batch_bucket,
    cut_after_eos,
    length_bucket,
    pick_tokens,
    split_after_image,
)
from workers.models import build_tiny_qwen3_vl, load_vlm
from workers.relation_generator import RelationGenerator

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
def vlm(tmp_path_factory: pytest.TempPathFactory):
    tiny_dir = build_tiny_qwen3_vl(tmp_path_factory.mktemp("models") / "tiny", seed=0)
    return load_vlm(str(tiny_dir), revision="", dtype=torch.float32, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.linear_gradient("L").resize((256, 256)).convert("RGB")


@pytest.fixture(scope="module")
def texts(vlm) -> list[str]:
    return [_render(vlm[0], prompt) for prompt in PROMPTS]


@pytest.fixture(scope="module")
def decoder(vlm) -> ImagePromptDecoder:
    # One decoder for the module: later tests reuse (and re-view) the storage of earlier ones.
    return ImagePromptDecoder(*vlm)


@pytest.fixture(scope="module")
def plain(vlm, image, texts) -> list[list[int]]:
    """Greedy tokens of ``generate`` with the model's own eos ids."""
    return _reference(vlm, image, texts)


def _render(processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _eos_ids(model) -> list[int]:
    eos = model.generation_config.eos_token_id
    return list(eos) if isinstance(eos, list) else [eos]


def _reference(vlm, image: Image.Image, texts: list[str]) -> list[list[int]]:
    """``model.generate`` on the full prompts, left-padded into one batch, greedy."""
    processor, model = vlm
    assert processor.tokenizer.padding_side == "left"
    inputs = processor(text=texts, images=[image] * len(texts), padding=True, return_tensors="pt")
    assert not inputs["attention_mask"].all(), "the prompts should need padding"
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    return cut_after_eos(output[:, inputs["input_ids"].shape[1] :], _eos_ids(model))


def _greedy(decoder: ImagePromptDecoder, image, texts, batch_size: int) -> list[list[int]]:
    return decoder.generate(image, texts, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS,
                            temperature=0.0, seed=0)


def test_splitting_after_the_image_tokenizes_like_the_whole_prompt(vlm, image, texts) -> None:
    processor = vlm[0]
    for text in texts:
        prefix, suffix = split_after_image(text)
        assert prefix + suffix == text and prefix.endswith("<|vision_end|>")
        whole = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        head = processor(text=[prefix], images=[image], return_tensors="pt")["input_ids"][0].tolist()
        tail = processor.tokenizer(suffix, add_special_tokens=False)["input_ids"]
        assert whole == head + tail


@pytest.mark.parametrize("batch_size", [2, 8, 3])
def test_greedy_tokens_equal_generate(plain, decoder, image, texts, batch_size: int) -> None:
    # 2: batches of 2, 2, 1 (two batch buckets); 8: one batch padded with 3 dummy rows;
    # 3: batches of 3 and 2, a batch bucket that is not a power of two. All share one storage.
    assert _greedy(decoder, image, texts, batch_size) == plain


def test_rows_stop_at_their_eos(vlm, plain, decoder, image, texts, monkeypatch) -> None:
    # The random model rarely emits a real eos, so declare one of its greedy tokens the eos:
    # a token that row 0 emits at step 3 for the first time and another row never emits.
    eos = plain[0][3]
    assert eos not in plain[0][:3] and any(eos not in row for row in plain), "pick another step"
    monkeypatch.setattr(vlm[1].generation_config, "eos_token_id", [eos])

    expected = _reference(vlm, image, texts)
    assert len(expected[0]) == 4 and max(len(row) for row in expected) == MAX_NEW_TOKENS
    assert _greedy(decoder, image, texts, batch_size=8) == expected

    # Through the generator: the count includes each eos, the text drops it.
    generator = RelationGenerator(*vlm, batch_size=2, max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
    answers = generator.generate(image, PROMPTS, seed=0)
    assert generator.generated_tokens == sum(len(row) for row in expected)
    assert answers == [vlm[0].decode(row, skip_special_tokens=True).strip() for row in expected]
    generator.generate(image, PROMPTS[:2], seed=0)
    assert generator.generated_tokens == sum(len(row) for row in expected + expected[:2])
    assert generator.generate(image, [], seed=0) == []


def test_decoding_stops_when_every_row_has_its_eos(vlm, plain, decoder, image, texts,
                                                   monkeypatch) -> None:
    monkeypatch.setattr(vlm[1].generation_config, "eos_token_id", sorted({row[0] for row in plain}))
    decoded: list[torch.Tensor] = []

    def spy(*args, **kwargs) -> torch.Tensor:
        decoded.append(original(*args, **kwargs))
        return decoded[-1]

    original = decoder._decode
    monkeypatch.setattr(decoder, "_decode", spy)
    rows = _greedy(decoder, image, texts, batch_size=8)

    assert [len(row) for row in rows] == [1] * len(texts)
    # Every row ended at step 0: decoding stopped at the first check, padding after each eos.
    [tokens] = decoded
    assert tokens.shape == (8, EOS_CHECK_EVERY)
    assert (tokens[: len(texts), 1:] == vlm[1].generation_config.pad_token_id).all()


def test_seeded_sampling_repeats_and_seeds_differ(decoder, image, texts) -> None:
    def sample(seed: int) -> list[list[int]]:
        return decoder.generate(image, texts, batch_size=8, max_new_tokens=MAX_NEW_TOKENS,
                                temperature=1.0, seed=seed)

    first = sample(7)
    torch.manual_seed(123)  # the global RNG plays no part
    assert sample(7) == first
    assert sample(8) != first


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


def test_buckets() -> None:
    assert [batch_bucket(rows, 8) for rows in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert [batch_bucket(rows, 6) for rows in (3, 5, 6)] == [4, 6, 6]
    assert [length_bucket(tokens) for tokens in (1, 256, 257, 1300)] == [256, 256, 512, 1536]


def test_prompts_must_share_the_image_prefix(decoder, image, texts) -> None:
    other = texts[0].replace("<|im_start|>user\n", "<|im_start|>user\nPicture 1: ")
    with pytest.raises(ValueError, match="image prefix"):
        decoder.generate(image, [texts[0], other], batch_size=2, max_new_tokens=2,
                         temperature=0.0, seed=0)
