"""The layers' compiled functions compile once per process, whatever a task's batch.

A compile costs seconds; one per new batch size or length lands in the time of the first
task with that layout (they used to take several seconds of a 10-second run).
Checked on the CPU, where inductor compiles the same graphs to C++.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from workers.relations.layers import _functions

# The 8B's attention shape: 32 query heads, 8 kv heads, head_dim 128. A batch of 32 rows (or 8)
# equals a model dim, the case that used to compile apart.
HEADS, KV_HEADS, DIM = 32, 8, 128


@pytest.fixture()
def fresh_compiles():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_the_layer_functions_compile_once_for_decode_and_once_for_prefill(fresh_compiles) -> None:
    rotate = _functions(True).norm_and_rotate
    weight = torch.ones(DIM)
    for count, length in ((32, 1), (448, 1), (8, 1), (40, 90), (45, 61)):
        query = torch.randn(count, length, HEADS, DIM)
        key = torch.randn(count, length, KV_HEADS, DIM)
        cos, sin = torch.randn(count, length, DIM), torch.randn(count, length, DIM)
        rotate(query, key, weight, weight, 1e-6, cos, sin, 0.1)
    assert _graphs() == 2
