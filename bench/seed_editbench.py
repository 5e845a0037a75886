"""The original editbench script (README, Baselines), re-implemented faithfully as a baseline (bench only, not the product).

The seed keeps both models in host memory and runs two phases per category, moving whole
models with ``.to()``::

    for category in benchmark:
        editor.to('cuda'); edit every pair (edited images kept in memory); editor.to('cpu')
        judge.to('cuda');  score every pair;                                 judge.to('cpu')

Five categories: 20 moves (each ``.to`` of a model), 9 swaps (the model on the GPU changes
from one to the other). Same computation as the fleet: the product's
``Editor`` (steps, size, true CFG, negative prompt, per-pair seed) and ``Judge`` (prompt
rendering and digit-probability scoring) are called as libraries, with the product's
``PromptManager``; only the orchestration is the seed's. The judge scores pair by pair
(``judge_batch_size`` 1) as the seed did.
"""

from __future__ import annotations

import hashlib
import io
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from shared.editbench.data import BenchmarkPair, prepare_benchmark
from shared.editbench.prompt_manager import PromptManager
from workers.editing.editor import Editor
from workers.judging.judge import Judge, JudgeItem
from workers.models.loading import load_image_edit_pipeline, load_vlm


@dataclass(frozen=True)
class SeedSettings:
    device: str  # "cuda" or "cpu" (the tiny smoke test)
    dtype: torch.dtype
    steps: int
    size: int
    true_cfg_scale: float
    negative_prompt: str
    seed: int  # the run seed: each pair's edit seed is derived from it and the pair key
    prompts_dir: Path
    judge_batch_size: int = 1


@dataclass
class Moves:
    """Every ``.to()`` of a whole model: how many, and the seconds they took."""

    device: str
    count: int = 0
    seconds: float = 0.0
    log: list[dict[str, Any]] = field(default_factory=list)

    def move(self, name: str, model: Any, target: str) -> float:
        _sync(self.device)
        start = time.perf_counter()
        model.to(target)
        _sync(self.device)
        seconds = time.perf_counter() - start
        self.count += 1
        self.seconds += seconds
        self.log.append({"model": name, "to": target, "seconds": round(seconds, 3)})
        return seconds


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(device: str, fn: Callable[[], Any]) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    value = fn()
    _sync(device)
    return value, time.perf_counter() - start


def pixel_digest(image: Image.Image) -> str:
    """sha256 of the RGB pixels, so an in-memory image and its PNG file compare equal."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def _by_category(pairs: list[BenchmarkPair]) -> dict[str, list[BenchmarkPair]]:
    groups: dict[str, list[BenchmarkPair]] = {}
    for pair in pairs:
        groups.setdefault(pair.category, []).append(pair)
    return groups


def load_models(editor_dir: str, judge_dir: str, s: SeedSettings) -> tuple[Any, Any, Any, dict]:
    """Both models from disk into host memory, as the seed started (the product's from_pretrained calls)."""
    cpu = torch.device("cpu")
    pipeline, editor_s = _timed("cpu", lambda: load_image_edit_pipeline(
        editor_dir, revision="", dtype=s.dtype, device=cpu))
    (processor, model), judge_s = _timed("cpu", lambda: load_vlm(
        judge_dir, revision="", dtype=s.dtype, device=cpu))
    return pipeline, processor, model, {"load_editor_s": round(editor_s, 3),
                                        "load_judge_s": round(judge_s, 3)}


def run_seed_editbench(benchmark: Path, editor_dir: str, judge_dir: str, s: SeedSettings,
                       report_path: Path) -> dict[str, Any]:
    """Run the seed loop over the benchmark; returns timings, moves, swaps, scores and edit digests.

    The makespan runs from loading the models off disk to writing the report.
    """
    start = time.perf_counter()
    pairs = prepare_benchmark(benchmark).pairs
    pipeline, processor, model, loads = load_models(editor_dir, judge_dir, s)
    editor = Editor(pipeline, Editor.family_of(pipeline).settings(
        steps=s.steps, size=s.size, guidance=s.true_cfg_scale, negative_prompt=s.negative_prompt,
        tiny=False))
    judge = Judge(processor, model, batch_size=s.judge_batch_size)
    prompts = PromptManager(s.prompts_dir)
    moves = Moves(s.device)
    phases, scores, digests = [], {}, {}
    for category, group in _by_category(pairs).items():
        phase = {"category": category, "pairs": len(group)}
        phase["editor_to_device_s"] = moves.move("editor", pipeline, s.device)
        edited, phase["edit_s"] = _timed(s.device, lambda: _edit_all(editor, group, s.seed))
        phase["editor_to_host_s"] = moves.move("editor", pipeline, "cpu")
        phase["judge_to_device_s"] = moves.move("judge", model, s.device)
        results, phase["score_s"] = _timed(s.device, lambda: _score_all(judge, prompts, group, edited))
        phase["judge_to_host_s"] = moves.move("judge", model, "cpu")
        phases.append({k: round(v, 3) if isinstance(v, float) else v for k, v in phase.items()})
        scores.update(results)
        digests.update({key: pixel_digest(image) for key, image in edited.items()})
    report = _write_report(report_path, pairs, scores)
    makespan = time.perf_counter() - start
    categories = len(phases)
    return {
        "makespan_s": round(makespan, 3), **loads,
        "edit_s": round(sum(p["edit_s"] for p in phases), 3),
        "score_s": round(sum(p["score_s"] for p in phases), 3),
        "moves_s": round(moves.seconds, 3), "moves": moves.count,
        # The model on the GPU changes twice per category but the first: 2C - 1.
        "swaps": max(0, 2 * categories - 1),
        "per_category": phases, "move_log": moves.log,
        "peak_gpu_allocated_gb": _peak_gb(s.device),
        "scores": scores, "edited_pixel_digests": digests, "report": report,
    }


def _edit_all(editor: Editor, group: list[BenchmarkPair], run_seed: int) -> dict[str, Image.Image]:
    """Edited images of one category, kept in host memory (the seed's phase-1 output)."""
    edited = {}
    for pair in group:
        original = Image.open(io.BytesIO(pair.image_bytes)).convert("RGB")
        # The fleet's seed for the same pair: the run seed and the item key.
        edited[pair.key] = editor.edit(original, pair.edit_instruction,
                                       seed=editor.seed_for(f"{run_seed}|{pair.key}"))
    return edited


def _score_all(judge: Judge, prompts: PromptManager, group: list[BenchmarkPair],
               edited: dict[str, Image.Image]) -> dict[str, float]:
    items = []
    for pair in group:
        prompt = prompts.get_full_prompt(pair.category, pair.original_description, pair.edit_instruction,
                                         {**pair.fields, "pair_id": pair.pair_id})
        items.append(JudgeItem(original_image=Image.open(io.BytesIO(pair.image_bytes)).convert("RGB"),
                               edited_image=edited[pair.key], system_prompt=prompt["system_prompt"],
                               user_prompt=prompt["user_prompt"]))
    return {pair.key: result.score for pair, result in zip(group, judge.score(items))}


def _write_report(path: Path, pairs: list[BenchmarkPair], scores: dict[str, float]) -> dict[str, Any]:
    """The seed's report: per category the scores, count and mean; overall mean and std."""
    import json

    report: dict[str, Any] = {"categories": {}}
    for category, group in _by_category(pairs).items():
        values = [scores[p.key] for p in group if p.key in scores]
        report["categories"][category] = {"scores": values, "count": len(values),
                                          "mean": statistics.fmean(values) if values else None}
    every = list(scores.values())
    report["overall"] = {"n": len(every), "mean": statistics.fmean(every) if every else None,
                         "std": statistics.pstdev(every) if every else None}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    return report


def _peak_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 1e9, 2) if device == "cuda" else None
