"""The Triton kernel for the rows' own columns, run by Triton's interpreter on the CPU.

The decode step uses it on GPUs (tests/test_cascade_attention_gpu.py checks it there inside
the whole step); here its arithmetic is checked against a plain softmax on any machine: rows
using 1 to all of their columns, more columns than one block, grouped query heads.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="the kernel is written in Triton (CUDA builds of torch ship it)")

ROOT = Path(__file__).resolve().parents[1]

RUN = """
import sys, torch
from workers.relations.row_attention import row_attention
queries, keys, values, used = torch.load(sys.argv[1])
torch.save(row_attention(queries, keys, values, used), sys.argv[2])
"""


# On a GPU host the compiled kernel is checked inside the whole step instead; the interpreter of
# the Triton that torch 2.11 ships fails there on the loop bound read from memory (it hands
# numpy >= 2 a one-element array where a scalar is meant), a fault of the interpreter only.
@pytest.mark.skipif(torch.cuda.is_available(), reason="the compiled kernel is checked on the GPU")
def test_row_attention_matches_a_plain_softmax(tmp_path):
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, dim, columns = 5, 8, 2, 32, 150
    queries = torch.randn(batch, heads, dim, generator=generator) / dim**0.5
    keys = torch.randn(batch, columns, kv_heads, dim, generator=generator)
    values = torch.randn(batch, columns, kv_heads, dim, generator=generator)
    used = torch.tensor([1, 7, 64, 65, 150], dtype=torch.int32)
    torch.save((queries, keys, values, used), tmp_path / "inputs.pt")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "inputs.pt"),
                           str(tmp_path / "outputs.pt")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    output, lse = torch.load(tmp_path / "outputs.pt")

    group = heads // kv_heads
    for row in range(batch):
        n = int(used[row])
        row_keys = keys[row, :n].repeat_interleave(group, dim=1).transpose(0, 1)  # (H, n, D)
        row_values = values[row, :n].repeat_interleave(group, dim=1).transpose(0, 1)
        scores = torch.einsum("hd,hnd->hn", queries[row], row_keys)
        expected = torch.einsum("hn,hnd->hd", torch.softmax(scores, dim=-1), row_values)
        torch.testing.assert_close(output[row], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lse[row], torch.logsumexp(scores, dim=-1), atol=1e-4, rtol=1e-4)
