"""The slot decoder's (bench/slot_decoder.py, the benchmarks' baseline) flash decode step equals
the plain-products one (CUDA only: flash needs a GPU). The flash step runs the rows' own columns
in bench/row_attention.py's Triton kernel: checked here inside the whole step.

Several image slots with prefixes of different lengths, rows of the slots interleaved (a row
pool) and one slot with no rows, rows at different columns, grouped query heads, and the prefix
cut into key ranges (including more ranges than a short prefix has columns, which leaves some
ranges empty).
"""

import dataclasses

import pytest
import torch

from bench.cascade_attention import CascadeCaches, FlashDecode, MatmulDecode, flash_available

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not flash_available(torch.device("cuda"), torch.bfloat16, 64),
    reason="needs CUDA with flash attention")

IMAGES, BATCH, PREFIX, ROW_LENGTH, KV_HEADS, HEADS, DIM, LAYERS = 4, 15, 40, 24, 2, 8, 64, 2


def _caches(generator: torch.Generator) -> CascadeCaches:
    def random(*shape):
        return torch.randn(*shape, generator=generator, device="cuda").to(torch.bfloat16)

    caches = CascadeCaches(
        images=IMAGES, batch=BATCH, prefix_length=PREFIX, row_length=ROW_LENGTH,
        prefix_keys=[random(IMAGES, PREFIX, KV_HEADS, DIM) for _ in range(LAYERS)],
        prefix_values=[random(IMAGES, PREFIX, KV_HEADS, DIM) for _ in range(LAYERS)],
        row_keys=[random(BATCH, ROW_LENGTH, KV_HEADS, DIM) for _ in range(LAYERS)],
        row_values=[random(BATCH, ROW_LENGTH, KV_HEADS, DIM) for _ in range(LAYERS)],
        prefix_filled=torch.tensor([40, 17, 3, 9], device="cuda"),
        columns=torch.randint(0, ROW_LENGTH - 1, (BATCH,), generator=generator, device="cuda"),
        row_slot=torch.zeros(BATCH, dtype=torch.long, device="cuda"),
        by_slot=torch.zeros(BATCH, dtype=torch.long, device="cuda"),
        slot_starts=torch.zeros(IMAGES + 1, dtype=torch.int32, device="cuda"))
    caches.assign([2, 0, 1, 0, 2, 2, 1, 0, 0, 2, 1, 2, 0, 0, 1])  # slot 3 has no rows
    return caches


def _copy(caches: CascadeCaches) -> CascadeCaches:
    return dataclasses.replace(
        caches, prefix_keys=[t.clone() for t in caches.prefix_keys],
        prefix_values=[t.clone() for t in caches.prefix_values],
        row_keys=[t.clone() for t in caches.row_keys], row_values=[t.clone() for t in caches.row_values])


@pytest.mark.parametrize("splits", [1, 3, 8])
def test_flash_decode_matches_plain_products(splits):
    generator = torch.Generator(device="cuda").manual_seed(splits)
    caches = _caches(generator)
    batch = BATCH
    query = (torch.randn(batch, HEADS, 1, DIM, generator=generator, device="cuda") / DIM**0.5
             ).to(torch.bfloat16)
    key = torch.randn(batch, KV_HEADS, 1, DIM, generator=generator, device="cuda").to(torch.bfloat16)
    value = torch.randn(batch, KV_HEADS, 1, DIM, generator=generator, device="cuda").to(torch.bfloat16)
    plain_caches, flash_caches = _copy(caches), _copy(caches)
    for layer in range(LAYERS):
        expected = MatmulDecode(plain_caches, ROW_LENGTH)(layer, query, key, value)
        got = FlashDecode(flash_caches, splits)(layer, query, key, value)
        assert got.shape == expected.shape == (batch, 1, HEADS, DIM)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.float(), expected.float(), atol=2e-2, rtol=2e-2)
        # Both wrote the step's key and value at each row's column.
        torch.testing.assert_close(flash_caches.row_keys[layer], plain_caches.row_keys[layer])
