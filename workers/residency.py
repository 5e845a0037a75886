"""Which of this process's big models sit on the GPU, swapping them when they do not all fit.

A worker process runs a diffusion editor (~40-58 GB) and a VLM judge (~60 GB); one
80 GB GPU cannot hold both, so the process keeps whichever it is using on the device
and parks the other in host memory. Usage::

    pool = ResidencyPool(device, default_budget_bytes(device, s.workers_per_gpu, s.memory_budget_gb))
    pool.register("editor", load_editor_modules, handle=lambda: editor)
    pool.register("judge", load_judge_modules, handle=lambda: judge)
    editor = pool.acquire("editor")   # loads it (first time) or swaps it back in
    ...
    judge = pool.acquire("judge")     # evicts the editor only if both do not fit

How a swap works: a model's weights are the parameters and buffers of its modules.
Eviction points each tensor's ``.data`` at a host copy (made once, on the first
eviction, pinned on CUDA) and lets the device copy go; loading back is one
host-to-device copy per tensor into fresh device memory. The ``nn.Parameter`` objects
never change, so the caller's pipeline/model objects keep working untouched. Weights
never change during inference, so nothing is ever copied back after the first time.

Host memory: every model that has been evicted once keeps a full host copy for the
life of the process (pinned, i.e. not swappable, on CUDA). Plan host RAM for the sum
of all registered models per worker process.

A model the caller knows it will not need again (``retire(name)``: the last edit of
the run has finished) is dropped when it must leave the device: no host copy is made
(pinning 58 GB takes about a minute) and any it had is freed; if it is acquired after
all, it is loaded again from its loader.

Not thread-safe: a worker process runs one task at a time, and nothing here locks.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psutil
import torch
from torch import nn

log = logging.getLogger(__name__)

GIB = 1 << 30
BUDGET_SETTING = "EVALFLEET_MEMORY_BUDGET_GB"
# Leaves room for activations, the CUDA context and allocator fragmentation.
BUDGET_FRACTION = 0.9


class BudgetExceededError(RuntimeError):
    """A model is larger than the whole per-process memory budget, so it can never be resident."""


@dataclass(frozen=True)
class SwapRecord:
    """One acquire that had to evict other models to make room.

    ``bytes_moved`` is the size of the model brought onto the device (parameters and
    buffers); ``seconds`` covers the evictions and the load. ``dropped``: the evicted
    models that were retired, so no host copy was kept.
    """

    evicted: list[str]
    loaded: str
    bytes_moved: int
    seconds: float
    dropped: list[str] = field(default_factory=list)


@dataclass
class _Model:
    name: str
    loader: Callable[[], dict[str, nn.Module]]
    handle_factory: Callable[[], Any] | None
    expected_bytes: int | None
    # Filled on the first load; the loader is never called again after that.
    modules: dict[str, nn.Module] | None = None
    tensors: list[torch.Tensor] = field(default_factory=list)
    nbytes: int = 0
    handle: Any = None
    # Filled on the first eviction, one per entry of ``tensors``.
    host_copies: list[torch.Tensor] | None = None
    # Device memory its user holds beside the weights (a decoder's KV cache), and how to free it.
    working_bytes: int = 0
    release: Callable[[], None] | None = None
    # Set by retire(): the next eviction drops the model instead of keeping a host copy.
    retired: bool = False

    @property
    def loaded(self) -> bool:
        return self.modules is not None


def model_bytes(modules: dict[str, nn.Module] | Iterable[nn.Module]) -> int:
    """Bytes of the parameters and buffers of ``modules``; a tensor shared by several counts once."""
    return _bytes_of(_unique_tensors(modules))


def default_budget_bytes(device: torch.device, workers_per_gpu: int, setting_gb: float) -> int:
    """The bytes of model weights one worker process may keep on ``device``.

    ``setting_gb > 0`` (EVALFLEET_MEMORY_BUDGET_GB) wins; otherwise 90% of the device's
    memory (host memory on a CPU device) shared evenly by the workers on that device.
    """
    if setting_gb > 0:
        return int(setting_gb * GIB)
    if workers_per_gpu < 1:
        raise ValueError(f"workers_per_gpu must be at least 1, got {workers_per_gpu}")
    device = torch.device(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = psutil.virtual_memory().total
    return int(total * BUDGET_FRACTION / workers_per_gpu)


class ResidencyPool:
    """Keeps registered models on ``device`` within ``budget_bytes``, evicting the least recently used.

    ``pin_host_copies``: None pins on CUDA (fast, asynchronous copies) and never on CPU.
    ``on_swap`` is called after every swap, e.g. to count swaps in a run's report.
    """

    def __init__(self, device: torch.device, budget_bytes: int, *,
                 pin_host_copies: bool | None = None,
                 on_swap: Callable[[SwapRecord], None] | None = None) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        self.device = torch.device(device)
        self.budget_bytes = int(budget_bytes)
        self.pin_host_copies = self.device.type == "cuda" if pin_host_copies is None else pin_host_copies
        self.on_swap = on_swap
        self.loads = 0  # every acquire that put a model on the device, swaps included
        self.drops = 0  # evictions of retired models, which kept no host copy
        self.swaps: list[SwapRecord] = []
        self._models: dict[str, _Model] = {}
        self._resident: OrderedDict[str, None] = OrderedDict()  # least recently used first

    # --- public API ---------------------------------------------------------------

    def register(self, name: str, loader: Callable[[], dict[str, nn.Module]],
                 handle: Callable[[], Any] | None = None, *,
                 expected_bytes: int | None = None) -> None:
        """Add a model; nothing is loaded until the first ``acquire(name)``.

        ``loader`` returns the model's modules, on the device or on CPU (the pool moves
        them). ``handle`` is called once, after the first load, and its result is what
        ``acquire`` returns (default: the loader's dict of modules).

        ``expected_bytes`` (e.g. the checkpoint's size) lets the pool make room *before*
        the first load. Without it, the pool learns the size only after the loader
        returns, so a loader that loads straight onto the device while another model is
        resident may run out of device memory: pass it, or have the loader return CPU
        modules.
        """
        if name in self._models:
            raise ValueError(f"model {name!r} is already registered")
        self._models[name] = _Model(name, loader, handle, expected_bytes)

    def acquire(self, name: str) -> Any:
        """Make ``name`` resident on the device (evicting others if needed) and return its handle."""
        model = self._model(name)
        model.retired = False  # wanted again after all
        if name in self._resident:
            self._resident.move_to_end(name)
            return model.handle
        start = time.perf_counter()
        if model.loaded:
            evicted = self._make_room(name, model.nbytes)
            self._load_back(model)
        else:
            evicted = self._first_load(model)
        self._resident[name] = None
        self.loads += 1
        seconds = time.perf_counter() - start
        if evicted:
            dropped = [n for n in evicted if not self._models[n].loaded]
            self._record_swap(SwapRecord(evicted, name, model.nbytes, seconds, dropped))
        else:
            log.info("loaded %s (%s) onto %s in %.2fs", name, _gib(model.nbytes), self.device, seconds)
        return model.handle

    def retire(self, name: str) -> None:
        """``name`` will not be needed again: when it must leave the device, drop it.

        Unknown names are ignored (the caller may retire a model this process never loaded).
        """
        if name in self._models:
            self._models[name].retired = True

    @property
    def host_bytes(self) -> int:
        """Bytes of the host copies this pool keeps (pinned on CUDA)."""
        return sum(_bytes_of(m.host_copies) for m in self._models.values()
                   if m.host_copies is not None and self.device.type != "cpu")

    @property
    def resident(self) -> list[str]:
        """Names of the models on the device, least recently used first."""
        return list(self._resident)

    @property
    def resident_bytes(self) -> int:
        """Weights and working memory of the resident models."""
        return sum(self._models[name].nbytes + self._models[name].working_bytes
                   for name in self._resident)

    def room_for_working(self, name: str) -> int:
        """Bytes of the budget left beside ``name``'s weights if every other model left."""
        return self.budget_bytes - self._model(name).nbytes

    def set_working_bytes(self, name: str, nbytes: int, release: Callable[[], None]) -> None:
        """Count ``nbytes`` that the user of resident ``name`` holds beside its weights.

        The working memory (a decoder's KV cache) is part of the budget like weights: other
        models are evicted to make room for it, and when ``name`` itself is evicted,
        ``release`` is called to free it before the next model comes in.
        """
        model = self._model(name)
        if name not in self._resident:
            raise ValueError(f"{name!r} is not resident")
        if nbytes > self.room_for_working(name):
            raise BudgetExceededError(
                f"{name!r} needs {_gib(nbytes)} beside its weights ({_gib(model.nbytes)}) but the "
                f"budget is {_gib(self.budget_bytes)}; raise {BUDGET_SETTING}")
        model.working_bytes, model.release = 0, release
        self._make_room(name, nbytes, keep=name)
        model.working_bytes = nbytes

    # --- loading and eviction -------------------------------------------------------

    def _model(self, name: str) -> _Model:
        try:
            return self._models[name]
        except KeyError:
            raise KeyError(f"model {name!r} is not registered; registered: {sorted(self._models)}") from None

    def _first_load(self, model: _Model) -> list[str]:
        evicted = self._make_room(model.name, model.expected_bytes) if model.expected_bytes else []
        modules = model.loader()
        _check_modules(model.name, modules)
        tensors = _unique_tensors(modules)
        nbytes = _bytes_of(tensors)
        already_on_device = any(self._on_device(t) for t in tensors)
        if already_on_device and self.resident_bytes + nbytes > self.budget_bytes:
            log.warning("the loader of %s put its weights on %s while %s were resident, over the "
                        "budget; pass expected_bytes= to register() or load on CPU to avoid "
                        "running out of device memory", model.name, self.device, self.resident)
        evicted += self._make_room(model.name, nbytes)
        for tensor in tensors:
            if not self._on_device(tensor):
                tensor.data = tensor.data.to(self.device)
        model.modules, model.tensors, model.nbytes = modules, tensors, nbytes
        model.handle = modules if model.handle_factory is None else model.handle_factory()
        return evicted

    def _make_room(self, name: str, needed: int, keep: str | None = None) -> list[str]:
        """Evict least recently used models (never ``keep``) until ``needed`` more bytes fit;
        returns their names."""
        if needed > self.budget_bytes:
            raise BudgetExceededError(
                f"model {name!r} needs {_gib(needed)} ({needed} bytes) but the per-process memory "
                f"budget is {_gib(self.budget_bytes)} ({self.budget_bytes} bytes) on {self.device}; "
                f"raise {BUDGET_SETTING}, run fewer workers per GPU, or use a smaller model/dtype")
        evicted = []
        while self.resident_bytes + needed > self.budget_bytes:
            victim = next((other for other in self._resident if other != keep), None)
            if victim is None:
                break
            self._evict(self._models[victim])
            evicted.append(victim)
        return evicted

    def _evict(self, model: _Model) -> None:
        if model.release is not None:
            model.release()  # its working memory goes first: it is useless without the weights
        model.working_bytes = 0
        if model.retired:
            self._drop(model)
            return
        if model.host_copies is None:
            model.host_copies = self._make_host_copies(model.tensors)
        for tensor, host in zip(model.tensors, model.host_copies):
            tensor.data = host
        self._release(model, "evicted")

    def _drop(self, model: _Model) -> None:
        """Let the weights go entirely; a later acquire calls the loader again."""
        for tensor in model.tensors:
            tensor.data = torch.empty(0, dtype=tensor.dtype)
        # Room is made for the reload before the loader runs.
        model.expected_bytes = model.expected_bytes or model.nbytes
        model.modules, model.tensors, model.handle, model.host_copies = None, [], None, None
        self.drops += 1
        self._release(model, "dropped")

    def _release(self, model: _Model, how: str) -> None:
        del self._resident[model.name]
        if self.device.type == "cuda":
            # The dropped device tensors go back to the caching allocator; hand them to
            # the driver so the next model (or another process on this GPU) can use them.
            torch.cuda.empty_cache()
        log.info("%s %s (%s) from %s", how, model.name, _gib(model.nbytes), self.device)

    def _make_host_copies(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.device.type == "cpu":
            return [t.data for t in tensors]  # already in host memory: nothing to copy
        copies = []
        for tensor in tensors:
            # Contiguous host copy: a (rare) strided parameter comes back contiguous, same values.
            host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu",
                               pin_memory=self.pin_host_copies)
            host.copy_(tensor.data, non_blocking=self.pin_host_copies)
            copies.append(host)
        self._synchronize()  # the asynchronous copies must land before the device memory is reused
        return copies

    def _load_back(self, model: _Model) -> None:
        assert model.host_copies is not None, f"{model.name} was never evicted"
        for tensor, host in zip(model.tensors, model.host_copies):
            tensor.data = host.to(self.device, non_blocking=self.pin_host_copies)
        self._synchronize()  # so the recorded seconds are the real copy time

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _on_device(self, tensor: torch.Tensor) -> bool:
        if tensor.device.type != self.device.type:
            return False
        # torch.device("cuda") means the current device; don't touch CUDA to resolve it.
        return self.device.index is None or tensor.device.index == self.device.index

    def _record_swap(self, record: SwapRecord) -> None:
        self.swaps.append(record)
        log.info("swap on %s: evicted %s, loaded %s (%s) in %.2fs", self.device,
                 ", ".join(record.evicted), record.loaded, _gib(record.bytes_moved), record.seconds)
        if self.on_swap is not None:
            self.on_swap(record)


def _check_modules(name: str, modules: Any) -> None:
    if not isinstance(modules, dict) or not all(isinstance(m, nn.Module) for m in modules.values()):
        raise TypeError(f"the loader of {name!r} must return a dict of name -> torch.nn.Module, "
                        f"got {type(modules).__name__}")
    for module_name, module in modules.items():
        for tensor in _module_tensors(module):
            if tensor.device.type == "meta":
                # Offloaded (device_map="auto"/accelerate hooks) weights live elsewhere
                # and cannot be swapped by re-pointing .data.
                raise ValueError(f"{name}.{module_name} has weights on the meta device; load it "
                                 "fully (no device_map offloading) before registering it")


def _module_tensors(module: nn.Module) -> Iterable[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def _unique_tensors(modules: dict[str, nn.Module] | Iterable[nn.Module]) -> list[torch.Tensor]:
    """Parameters and buffers, each once: tied weights are the same object in several modules."""
    if isinstance(modules, dict):
        modules = modules.values()
    seen: dict[int, torch.Tensor] = {}
    for module in modules:
        for tensor in _module_tensors(module):
            seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def _bytes_of(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _gib(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB"
