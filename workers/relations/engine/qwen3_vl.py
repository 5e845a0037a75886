"""What the paged engine knows of Qwen3-VL; another VLM family is another file like this one.

Every prompt renders as::

    <|im_start|>user\\n<|vision_start|><|image_pad|>...<|vision_end|>{prompt}<|im_end|>\\n<|im_start|>assistant\\n

The text up to ``<|vision_end|>`` (the image's *prefix*) is the same for all prompts of an
image; the rest is the prompt's *suffix*. The prefix goes through the vision tower once; its
embeddings (the image's features at its image tokens) then run through the same text layers
as every other token. Positions follow Qwen3-VL's 3D mrope: the prefix's from the model's
``get_rope_index``; text after the image has the same value on all three axes, counting on
from the prefix's largest + 1. The vision tower's deepstack features are added to the image
tokens' hidden states after the first layers, as the model's own forward does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from transformers import PreTrainedModel, ProcessorMixin

from workers.relations.decoding import eos_token_ids, pad_token_id, split_after_image
from workers.relations.image_inputs import prefix_tokens
from workers.relations.layers import Attention, run_text_layers


@dataclass
class PrefixInputs:
    """An image's prefix, ready for the text layers."""

    embeds: torch.Tensor  # (P, hidden) on the device
    positions: torch.Tensor  # (3, P) on the host: mrope positions
    visual_rank: torch.Tensor  # (P,) on the host: a token's row in ``deepstack``, -1 for text
    deepstack: list[torch.Tensor]  # per early layer, (visual tokens, hidden) on the device
    next_position: int  # the text position of the first suffix token

    @property
    def length(self) -> int:
        return self.embeds.shape[0]


class Qwen3VL:
    """A Qwen3-VL (dense or Mixture-of-Experts) and its processor, as the engine uses them."""

    def __init__(self, processor: ProcessorMixin, model: PreTrainedModel) -> None:
        self.processor, self.model = processor, model
        config = model.config.text_config
        self.layers, self.kv_heads = config.num_hidden_layers, config.num_key_value_heads
        self.head_dim, self.hidden_size = config.head_dim, config.hidden_size
        self.heads = config.num_attention_heads
        # Early text layers that add the vision tower's deepstack features at image tokens.
        self.deepstack_layers = len(getattr(model.config.vision_config, "deepstack_visual_indexes",
                                            None) or [])
        self.eos_ids = set(eos_token_ids(model))
        self.pad_id = pad_token_id(model, processor)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def split(self, texts: list[str]) -> tuple[str, list[list[int]]]:
        """(the prefix text the rendered prompts of one image share, each one's suffix ids)."""
        parts = [split_after_image(text) for text in texts]
        if any(prefix != parts[0][0] for prefix, _ in parts):
            raise ValueError("the prompts of an image do not share one image prefix")
        suffixes = self.processor.tokenizer([suffix for _, suffix in parts], add_special_tokens=False)
        return parts[0][0], suffixes["input_ids"]

    def prefix_tokens(self, image: Image.Image, prefix_text: str) -> int | None:
        """The prefix's token count from the image's size (None: the processor cannot tell)."""
        return prefix_tokens(self.processor, image, prefix_text)

    def encode_prefix(self, processed: dict) -> PrefixInputs:
        """The processor's outputs for one image's prefix through the vision tower."""
        device = self.device
        ids = processed["input_ids"].to(device)
        grid = processed["image_grid_thw"].to(device)
        vision = self.model.model.get_image_features(processed["pixel_values"].to(device), grid)
        embeds = self.model.model.language_model.embed_tokens(ids)[0]
        visual = (ids[0] == self.model.config.image_token_id)
        embeds[visual] = torch.cat(vision.pooler_output).to(embeds.dtype)
        positions, _ = self.model.model.get_rope_index(
            ids, processed["mm_token_type_ids"].to(device), image_grid_thw=grid,
            attention_mask=processed["attention_mask"].to(device))
        positions = positions[:, 0].cpu()
        visual = visual.cpu()
        rank = torch.where(visual, visual.long().cumsum(0) - 1, -1)
        return PrefixInputs(embeds=embeds, positions=positions, visual_rank=rank,
                            deepstack=[torch.cat(features) for features in vision.deepstack_features],
                            next_position=int(positions.max()) + 1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (T, hidden) of ids (T,)."""
        return self.model.model.language_model.embed_tokens(ids)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, attention: Attention,
                deepstack: tuple[torch.Tensor, list[torch.Tensor]] | list[torch.Tensor] | None,
                ) -> torch.Tensor:
        """The text layers on one flat sequence of T tokens (embeddings (T, hidden) at
        positions (3, T)); the final-normed hidden states (T, hidden)."""
        # On CUDA the elementwise work between the projections is compiled (one graph for
        # every step's token count): eager, it was ~300 small kernels a step.
        hidden = run_text_layers(self.model, embeds[None], positions[:, None], attention,
                                 compiled=self.device.type == "cuda", deepstack=deepstack)
        return hidden[0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)
