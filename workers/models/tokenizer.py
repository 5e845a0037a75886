"""A tiny, deterministic stand-in for the Qwen2 tokenizer.

The real Qwen3-VL / Qwen2.5-VL checkpoints ship a byte-level BPE tokenizer
(``Qwen2Tokenizer``) with ~151k tokens. Tests and the one-command mode cannot
download it, so we train a small byte-level BPE on an embedded corpus, with the
same pre-tokenizer, and wrap it in the very same ``Qwen2Tokenizer`` class with
the Qwen special tokens. Everything that consumes it (processors, chat templates,
left padding, ``skip_special_tokens`` decoding) then runs the real code paths.
"""

from __future__ import annotations

import json

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, Qwen2Tokenizer

# Same split as Qwen2Tokenizer, so words are cut where the real tokenizer cuts them.
_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The Qwen2 family's special tokens, in their real id order (151643...).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Added but *not* special in the real tokenizer: they survive skip_special_tokens.
QWEN_PLAIN_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)

# Byte-level BPE covers any input; the corpus only decides which merges exist (and the
# tiny FLUX.1 Kontext tokenizers take their vocabulary from it).
# It leans on the words the relations and edit prompts use, in English and Chinese.
CORPUS: tuple[str, ...] = (
    "这是一张图，物体和在位置，位于，请给出细节的相对关系 is roughly on near under holding",
    "这是一张图片。图中有一只猫和一张桌子，猫位于桌子上面。请给出两个物体之间的相对位置关系。",
    "请描述图中物体的位置、颜色、大小和形状，并说明它们之间的空间关系。",
    "左边、右边、上面、下面、前面、后面、旁边、里面、外面、中间、附近、远处。",
    "一个人站在汽车旁边，手里拿着一把红色的雨伞。狗在草地上奔跑，球在它的前面。",
    "把背景换成蓝天白云，把衣服的颜色改成绿色，删除左下角的文字，添加一朵花。",
    "编辑这张照片：让天空更亮，去掉路灯，把杯子放在桌子的右边，保持人物不变。",
    "主体、客体、关系、理由、置信度、边界框、坐标、区域、对象、场景、问题、答案。",
    "The cat is roughly on the table, near the window and under the lamp.",
    "A person is holding a red umbrella next to the car on the street.",
    "The dog is running on the grass; the ball is in front of it.",
    "Describe the relative position of the two objects: left of, right of, above, below,"
    " in front of, behind, inside, outside, next to, between, on top of, beneath.",
    "Given the image, list the relations between the subject and the object in JSON:"
    ' {"subject": "cat", "relation": "on", "object": "table", "confidence": 0.9}',
    "Edit the photo: replace the background with a blue sky, change the shirt to green,"
    " remove the text in the bottom left corner, add a flower, keep the person unchanged.",
    "The man is sitting on a chair and holding a cup of coffee. The woman is standing near"
    " the door, wearing a black coat. A bicycle is leaning against the wall.",
    "There is a bird above the tree, a boat on the water, a bridge over the river, clouds"
    " in the sky, a lamp beside the bed, books on the shelf, and shoes under the desk.",
    "Objects: person, man, woman, child, dog, cat, horse, bird, car, bus, truck, bicycle,"
    " motorcycle, train, boat, plane, bottle, cup, bowl, plate, fork, knife, spoon, chair,"
    " sofa, bed, table, desk, television, laptop, phone, keyboard, book, clock, vase, plant.",
    "Colors: red, orange, yellow, green, blue, purple, pink, brown, black, white, gray.",
    "Answer with one short sentence. Do not explain. Output only the relation, for example:"
    " the cup is on the plate; the plate is under the cup; the knife is next to the fork.",
    "system user assistant: You are a helpful assistant. The user asks a question about the picture and the"
    " assistant answers it with care, describing what is visible and where it is located.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 25 50 100 128 256 512 1024 0.1 0.5 0.9 1.0",
    "Punctuation and code: ( ) [ ] { } < > : ; , . ! ? - _ = + * / \\ | ' \" # @ & % $ ~ `",
    "def main():\n    return {'relation': 'near', 'score': 0.75}\n",
)

# An upper bound only: the corpus runs out of merges first (~1220 tokens). That
# keeps training deterministic, as no equal-count merges are cut off at the limit;
# build_tiny_tokenizer() gives byte-identical files across runs and processes.
_VOCAB_SIZE = 1500


def _train_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train the byte-level BPE; returns (vocab, merges) without special tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE,
        min_frequency=1,
        # All 256 byte symbols, so any text (any language, emoji) stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer=trainer)
    # The Python BPE model exposes no getter for merges; its JSON state has them.
    state = json.loads(bpe.to_str())["model"]
    return state["vocab"], [tuple(pair) for pair in state["merges"]]


def build_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A small ``Qwen2Tokenizer`` with the Qwen special tokens; same output every call."""
    vocab, merges = _train_bpe()
    # Start with <|endoftext|> as eos so the special tokens get ids in Qwen's order
    # (endoftext, im_start, im_end, ...); the chat models' eos is set right after.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=262144,
        split_special_tokens=False,
    )
    tokenizer.add_special_tokens({"extra_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    tokenizer.add_tokens(list(QWEN_PLAIN_ADDED_TOKENS))
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer
