"""The residency pool on small nn.Linear models of known sizes (CPU; the CUDA test runs only on a GPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.residency import (
    BudgetExceededError,
    ResidencyPool,
    SwapRecord,
    default_budget_bytes,
    model_bytes,
)

CPU = torch.device("cpu")
# nn.Linear(64, 64) in float32: a 64x64 weight and a 64 bias.
LINEAR_BYTES = (64 * 64 + 64) * 4


class Counted:
    """A loader that counts its calls and builds a seeded two-layer model."""

    def __init__(self, seed: int, device: torch.device = CPU) -> None:
        self.seed, self.device, self.calls = seed, device, 0

    def __call__(self) -> dict[str, nn.Module]:
        self.calls += 1
        torch.manual_seed(self.seed)
        return {"first": nn.Linear(64, 64).to(self.device), "second": nn.Linear(64, 64).to(self.device)}


MODEL_BYTES = 2 * LINEAR_BYTES


def run(modules: dict[str, nn.Module], x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return modules["second"](modules["first"](x.to(modules["first"].weight.device))).cpu()


def make_pool(budget: int, device: torch.device = CPU, **kwargs) -> tuple[ResidencyPool, dict[str, Counted]]:
    pool = ResidencyPool(device, budget, **kwargs)
    loaders = {"A": Counted(1, device), "B": Counted(2, device)}
    for name, loader in loaders.items():
        pool.register(name, loader)
    return pool, loaders


def test_both_fit_no_swaps():
    pool, loaders = make_pool(2 * MODEL_BYTES)
    for name in ["A", "B", "A", "B"]:
        pool.acquire(name)
    assert pool.swaps == []
    assert pool.loads == 2
    assert pool.resident == ["A", "B"]
    assert pool.resident_bytes == 2 * MODEL_BYTES
    assert [loader.calls for loader in loaders.values()] == [1, 1]


def test_budget_for_one_swaps_and_keeps_weights():
    seen: list[SwapRecord] = []
    pool, loaders = make_pool(MODEL_BYTES + MODEL_BYTES // 2, on_swap=seen.append)
    x = torch.randn(3, 64)
    a = pool.acquire("A")
    a_params = [p for m in a.values() for p in m.parameters()]
    before = run(a, x)

    b = pool.acquire("B")
    b_out = run(b, x)
    a_again = pool.acquire("A")

    assert [(s.evicted, s.loaded, s.bytes_moved) for s in pool.swaps] == [
        (["A"], "B", MODEL_BYTES), (["B"], "A", MODEL_BYTES)]
    assert seen == pool.swaps
    assert all(s.seconds >= 0 for s in seen)
    assert pool.loads == 3
    assert pool.resident == ["A"]
    assert a_again is a  # the caller's own objects come back ...
    assert [p for m in a_again.values() for p in m.parameters()] == a_params  # ... same Parameters
    assert torch.equal(run(a_again, x), before)
    assert torch.equal(run(pool.acquire("B"), x), b_out)
    assert [loader.calls for loader in loaders.values()] == [1, 1]


def test_loader_called_once_across_many_swaps():
    pool, loaders = make_pool(MODEL_BYTES)
    for name in ["A", "B"] * 5:
        pool.acquire(name)
    assert len(pool.swaps) == 9
    assert [loader.calls for loader in loaders.values()] == [1, 1]


def test_least_recently_used_is_evicted():
    pool = ResidencyPool(CPU, 2 * MODEL_BYTES)
    for name, seed in [("A", 1), ("B", 2), ("C", 3)]:
        pool.register(name, Counted(seed))
    pool.acquire("A")
    pool.acquire("B")
    pool.acquire("A")  # now B is the least recently used
    pool.acquire("C")
    assert pool.swaps[-1].evicted == ["B"]
    assert pool.resident == ["A", "C"]


def test_handle_is_what_acquire_returns():
    pool = ResidencyPool(CPU, MODEL_BYTES)
    wrapper = object()
    pool.register("A", Counted(1), handle=lambda: wrapper)
    assert pool.acquire("A") is wrapper
    assert pool.acquire("A") is wrapper


def test_model_over_budget_raises_with_name_and_sizes():
    pool, _ = make_pool(MODEL_BYTES - 1)
    with pytest.raises(BudgetExceededError) as raised:
        pool.acquire("A")
    message = str(raised.value)
    assert "'A'" in message
    assert str(MODEL_BYTES) in message and str(MODEL_BYTES - 1) in message
    assert "EVALFLEET_MEMORY_BUDGET_GB" in message
    assert pool.resident == [] and pool.loads == 0


def test_expected_bytes_over_budget_raises_before_loading():
    pool = ResidencyPool(CPU, MODEL_BYTES)
    loader = Counted(1)
    pool.register("big", loader, expected_bytes=MODEL_BYTES + 1)
    with pytest.raises(BudgetExceededError, match="'big'"):
        pool.acquire("big")
    assert loader.calls == 0


def test_expected_bytes_makes_room_before_the_loader_runs():
    pool = ResidencyPool(CPU, MODEL_BYTES)
    pool.register("A", Counted(1))
    resident_when_loading = []

    def load_b():
        resident_when_loading.extend(pool.resident)
        return Counted(2)()

    pool.register("B", load_b, expected_bytes=MODEL_BYTES)
    pool.acquire("A")
    pool.acquire("B")
    assert resident_when_loading == []
    assert [(s.evicted, s.loaded) for s in pool.swaps] == [(["A"], "B")]


def test_unknown_name_lists_registered():
    pool, _ = make_pool(MODEL_BYTES)
    with pytest.raises(KeyError, match="'A', 'B'"):
        pool.acquire("C")


def test_model_bytes_counts_tied_weight_once():
    embed = nn.Embedding(100, 16)
    head = nn.Linear(16, 100, bias=False)
    head.weight = embed.weight  # tied, as in most language models
    assert model_bytes({"embed": embed, "head": head}) == 100 * 16 * 4
    assert model_bytes([nn.Linear(64, 64)]) == LINEAR_BYTES


def test_model_bytes_counts_buffers_and_dtype():
    norm = nn.BatchNorm1d(8).to(torch.bfloat16)  # weight, bias, running mean/var, num_batches_tracked
    assert model_bytes({"norm": norm}) == 4 * 8 * 2 + 8  # int64 counter


def test_tied_weight_survives_swaps():
    def load():
        embed, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
        head.weight = embed.weight
        return {"embed": embed, "head": head}

    pool = ResidencyPool(CPU, 10 * 4 * 4)
    pool.register("tied", load)
    pool.register("other", lambda: {"x": nn.Linear(4, 10, bias=False)})
    tied = pool.acquire("tied")
    pool.acquire("other")
    pool.acquire("tied")
    assert tied["head"].weight is tied["embed"].weight
    assert len(pool.swaps) == 2


def test_default_budget_honours_setting():
    assert default_budget_bytes(CPU, workers_per_gpu=4, setting_gb=1.5) == int(1.5 * (1 << 30))


def test_default_budget_from_host_memory_on_cpu():
    import psutil

    total = psutil.virtual_memory().total
    assert default_budget_bytes(CPU, workers_per_gpu=2, setting_gb=0) == int(total * 0.9 / 2)


def test_cpu_pool_does_not_pin():
    assert ResidencyPool(CPU, 1).pin_host_copies is False


def test_a_retired_model_is_dropped_not_copied_and_reloads_if_wanted_again():
    pool, loaders = make_pool(MODEL_BYTES)
    x = torch.randn(3, 64)
    before = run(pool.acquire("A"), x)
    pool.retire("A")  # e.g. the last edit of the run has finished
    pool.acquire("B")
    assert pool.resident == ["B"] and pool.drops == 1
    assert [(s.evicted, s.dropped) for s in pool.swaps] == [(["A"], ["A"])]
    # Wanted after all: loaded again from its loader, same weights.
    a = pool.acquire("A")
    assert loaders["A"].calls == 2 and torch.equal(run(a, x), before)
    # Acquiring it cancelled the retirement: the next eviction keeps it.
    pool.acquire("B")
    assert pool.swaps[-1].dropped == [] and pool.drops == 1
    pool.retire("never registered")  # ignored


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_a_retired_model_leaves_no_pinned_copy():
    cuda = torch.device("cuda", torch.cuda.current_device())
    pool, loaders = make_pool(MODEL_BYTES, device=cuda)
    x = torch.randn(3, 64)
    pool.acquire("A")
    b_out = run(pool.acquire("B"), x)  # A comes back later: it keeps a pinned host copy
    assert pool.host_bytes == MODEL_BYTES and pool.swaps[-1].dropped == []
    pool.retire("B")
    with_b = torch.cuda.memory_allocated(cuda)  # B on the device, A's pinned copy on the host
    pool.acquire("A")  # B is done: dropped, no host copy made
    assert pool.swaps[-1].dropped == ["B"] and pool.host_bytes == MODEL_BYTES
    # A's weights came in and B's went (same sizes): the device holds no more than before. Only the
    # change is measured: the device also holds what is neither's, such as cuBLAS's workspace.
    assert torch.cuda.memory_allocated(cuda) <= with_b
    pool.retire("A")
    b = pool.acquire("B")  # A is done too: dropped, and its host copy freed
    assert pool.swaps[-1].dropped == ["A"] and pool.host_bytes == 0
    assert loaders["B"].calls == 2 and torch.equal(run(b, x), b_out)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_swaps_move_weights_and_free_memory():
    cuda = torch.device("cuda", torch.cuda.current_device())
    pool, loaders = make_pool(MODEL_BYTES, device=cuda)
    loaders["B"].device = CPU  # the pool moves CPU-loaded modules onto the device
    assert pool.pin_host_copies is True
    x = torch.randn(3, 64)
    a = pool.acquire("A")
    before = run(a, x)
    b = pool.acquire("B")
    assert b["first"].weight.device == cuda
    assert a["first"].weight.device.type == "cpu" and a["first"].weight.is_pinned()
    on_device_with_b = torch.cuda.memory_allocated(cuda)
    pool.acquire("A")
    assert a["first"].weight.device == cuda and b["first"].weight.device.type == "cpu"
    assert torch.cuda.memory_allocated(cuda) <= on_device_with_b + LINEAR_BYTES  # B's memory was freed
    assert torch.equal(run(a, x), before)
    assert [(s.evicted, s.loaded) for s in pool.swaps] == [(["A"], "B"), (["B"], "A")]
