"""The host side of the paged engine: which sequences run at each step, and how many tokens.

A call's prompts are ``Row``s; each image's prefix (its vision tokens and the text before the
prompt's own part) is a ``Prefix``, prefilled once and read by all of the image's rows. Each
step, ``schedule`` returns a ``StepPlan``: every running row's next token (decode), then
prefill chunks (rows and prefixes still prefilling, then images and prompts that start) up to
``step_tokens`` tokens, all for one forward. Rows take blocks from the ``BlockPool`` as they
grow; when none are left the latest row to start is preempted (its blocks given back, its
tokens recomputed when it starts again) and nothing new starts that step. An image is loaded
(its prefix's blocks taken) while the prompts already loaded would leave rows idle, and
given back when its last prompt ends. ``postprocess`` takes the step's sampled tokens back.

Nothing here touches the model or the device.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from workers.relations.engine.kv_cache import BlockPool

# A row's token sampled by a step still running on the device (planning ahead of it).
PENDING = -1
# Images loaded at once, at most: beyond what the rows need, more only hold prefix blocks (and
# the step's buffers hold a block table per loaded image).
MAX_LOADED_IMAGES = 128


@dataclass(eq=False)
class Prefix:
    """An image's prefix: ``length`` tokens, ``computed`` of them in the cache."""

    image: int
    length: int
    computed: int = 0
    rows_left: int = 0  # the image's prompts not finished

    @property
    def ready(self) -> bool:
        return self.computed == self.length


@dataclass(eq=False)
class Row:
    """One prompt: its image, its place among the image's prompts, its suffix token ids and
    budget; ``output`` is what it generated, ``computed`` its tokens (suffix + output) whose
    keys and values are in the cache."""

    image: int
    index: int
    suffix: list[int]
    max_new_tokens: int
    output: list[int] = field(default_factory=list)
    computed: int = 0
    resolved: int = 0  # ``output`` tokens known (the rest are PENDING)
    ended: bool = False  # eos or budget: its blocks are given back
    reported: bool = False  # given back by ``resolve`` as ended, its output whole

    @property
    def length(self) -> int:
        return len(self.suffix) + len(self.output)

    def tokens(self, start: int, end: int) -> list[int]:
        """Its token ids ``start:end`` (suffix, then output)."""
        known = len(self.suffix)
        if start >= known:  # a running row's next token: no copy of the whole row
            return self.output[start - known:end - known]
        return (self.suffix + self.output)[start:end]


@dataclass
class Chunk:
    """Tokens ``start:start+count`` of a sequence, run at this step; ``samples``: the chunk
    reaches the end of a row's known tokens, so its last token gives the row's next one."""

    sequence: Prefix | Row
    start: int
    count: int
    samples: bool = field(init=False)

    def __post_init__(self) -> None:
        self.samples = isinstance(self.sequence, Row) and self.end == self.sequence.length

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass
class StepPlan:
    """One step: running rows' next tokens, prefill chunks, and the rows preempted for it."""

    decode: list[Chunk] = field(default_factory=list)
    prefill: list[Chunk] = field(default_factory=list)
    preempted: list[Row] = field(default_factory=list)
    prefixes: dict[int, Prefix] = field(default_factory=dict)  # the loaded images' prefixes

    @property
    def chunks(self) -> list[Chunk]:
        """In the forward's token order."""
        return self.decode + self.prefill

    @property
    def sampling(self) -> list[Chunk]:
        """The chunks whose last token picks a row's next token, in the forward's order."""
        return [chunk for chunk in self.chunks if chunk.samples]

    @property
    def tokens(self) -> int:
        return sum(chunk.count for chunk in self.chunks)


class Scheduler:
    """Plans the steps of one call over ``rows`` (in order) whose images have prefixes of
    ``prefix_lengths[image]`` tokens; at most ``max_rows`` rows run at once."""

    def __init__(self, rows: list[Row], prefix_lengths: dict[int, int], blocks: BlockPool, *,
                 max_rows: int, step_tokens: int, eos: set[int]) -> None:
        if max_rows < 1 or step_tokens < 1:
            raise ValueError("max_rows and step_tokens must be at least 1")
        self.blocks, self.max_rows, self.step_tokens, self.eos = blocks, max_rows, step_tokens, eos
        self.waiting: deque[Row] = deque(rows)
        self.running: list[Row] = []  # in the order they started
        self.prefix_lengths = prefix_lengths
        self.images_left: deque[int] = deque(dict.fromkeys(row.image for row in rows))
        self.loaded: dict[int, Prefix] = {}
        self.rows_of = {image: sum(row.image == image for row in rows) for image in self.images_left}
        # A loaded image leaves room for the longest row at least: one row can always finish.
        self.longest_row = max((blocks.blocks_for(len(r.suffix) + r.max_new_tokens) for r in rows),
                               default=0)
        self.preemptions = 0
        for image in self.images_left:
            if blocks.blocks_for(prefix_lengths[image]) + self.longest_row > blocks.blocks:
                raise MemoryError(
                    f"an image's prefix ({prefix_lengths[image]} tokens) and the longest row "
                    f"need more than the {blocks.blocks} blocks of {blocks.block_size} tokens the "
                    "cache holds; lower EVALFLEET_MAX_NEW_TOKENS or raise EVALFLEET_MEMORY_BUDGET_GB")

    @property
    def finished(self) -> bool:
        return not self.waiting and not self.running

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        budget = self._run_rows(plan, self.step_tokens)
        budget = self._run_prefixes(plan, budget)
        if not plan.preempted:  # blocks ran out this step: nothing new starts
            self._load_images()
            budget = self._run_prefixes(plan, budget, only_new=True)
            self._start_rows(plan, budget)
        plan.prefixes = dict(self.loaded)
        if not plan.chunks and not self.finished:
            raise RuntimeError("the scheduler found nothing to run (a bug): "
                               f"{len(self.waiting)} waiting, {len(self.running)} running")
        return plan

    def postprocess(self, plan: StepPlan, tokens: list[int]) -> list[Row]:
        """Take a step's sampled tokens (one per ``plan.sampling`` chunk); the rows that
        ended (eos or their budget), their blocks given back."""
        self.expect(plan)
        return self.resolve(plan, tokens)

    def expect(self, plan: StepPlan) -> None:
        """``plan`` runs: its sequences' tokens are in the cache, and each sampling row has
        one more token, PENDING until ``resolve``; a row at its budget ends now. The next
        step can be planned before this one's tokens are known (only eos needs them: a row
        that emitted one runs one wasted token in the step planned meanwhile)."""
        for chunk in plan.chunks:
            chunk.sequence.computed = chunk.end
        for chunk in plan.sampling:
            row = chunk.sequence
            row.output.append(PENDING)
            if len(row.output) >= row.max_new_tokens and not row.ended:
                self._finish(row)

    def resolve(self, plan: StepPlan, tokens: list[int]) -> list[Row]:
        """``plan``'s sampled tokens, in place of its PENDING ones (a step's after the one
        before); the rows that ended with them, their outputs whole."""
        ended = []
        for chunk, token in zip(plan.sampling, tokens, strict=True):
            row = chunk.sequence
            if row.reported or row.resolved >= len(row.output):
                continue  # a token after its eos: wasted, not kept
            row.output[row.resolved] = token
            row.resolved += 1
            if token in self.eos:
                del row.output[row.resolved:]
                if not row.ended:
                    self._finish(row)
            if row.ended and row.resolved == len(row.output):
                row.reported = True
                ended.append(row)
        return ended

    # --- the parts of a step -------------------------------------------------------------

    def _run_rows(self, plan: StepPlan, budget: int) -> int:
        """Every running row's next token (outside ``budget``), or the next chunk of its
        tokens still to prefill (within it); when blocks run out, the latest row to start is
        preempted."""
        for row in list(self.running):  # a row preempted is later in the list: not planned
            if row in plan.preempted:
                continue
            left = row.length - row.computed
            count = 1 if left == 1 else min(left, budget)
            if count == 0 or not self._grow(row, row.computed + count, plan):
                continue
            if left == 1:
                plan.decode.append(Chunk(row, row.computed, 1))
            else:
                plan.prefill.append(Chunk(row, row.computed, count))
                budget -= count
        return budget

    def _grow(self, row: Row, tokens: int, plan: StepPlan) -> bool:
        """Hold blocks for ``tokens`` of ``row``, preempting the latest rows to start as
        needed; False if ``row`` itself had to go."""
        if len(self.blocks.table(row)) * self.blocks.block_size >= tokens:
            return True  # most steps of a row: its last block has room
        while not self.blocks.can_hold(row, tokens):
            victim = self.running[-1]
            self._preempt(victim, plan)
            if victim is row:
                return False
        self.blocks.hold(row, tokens)
        return True

    def _preempt(self, row: Row, plan: StepPlan) -> None:
        self.running.remove(row)
        self.blocks.release(row)
        row.computed = 0  # recomputed from its first token (its output is kept)
        self.waiting.appendleft(row)
        plan.preempted.append(row)
        self.preemptions += 1

    def _run_prefixes(self, plan: StepPlan, budget: int, only_new: bool = False) -> int:
        """Chunks of the loaded prefixes not yet in the cache (``only_new``: those not in
        ``plan`` yet)."""
        planned = {id(chunk.sequence) for chunk in plan.prefill}
        for prefix in self.loaded.values():
            if budget == 0:
                break
            if prefix.ready or (only_new and id(prefix) in planned):
                continue
            count = min(prefix.length - prefix.computed, budget)
            plan.prefill.append(Chunk(prefix, prefix.computed, count))
            budget -= count
        return budget

    def _load_images(self) -> None:
        """Load the next images while the prompts of those loaded would leave rows idle and
        their prefix's blocks are free (one row of the longest still fits beside them)."""
        while self.images_left and len(self.loaded) < MAX_LOADED_IMAGES:
            waiting = sum(row.image in self.loaded for row in self.waiting)
            if waiting >= self.max_rows - len(self.running):
                return
            image = self.images_left[0]
            prefix = Prefix(image, self.prefix_lengths[image], rows_left=self.rows_of[image])
            held = sum(self.blocks.blocks_for(p.length) for p in self.loaded.values())
            need = self.blocks.blocks_for(prefix.length)
            if (not self.blocks.can_hold(prefix, prefix.length)
                    or held + need + self.longest_row > self.blocks.blocks):
                return
            self.blocks.hold(prefix, prefix.length)
            self.loaded[image] = prefix
            self.images_left.popleft()

    def _start_rows(self, plan: StepPlan, budget: int) -> None:
        """Waiting rows whose prefix is in the cache start, in order, while rows, blocks and
        the step's tokens last."""
        for row in list(self.waiting):
            if budget == 0 or len(self.running) >= self.max_rows:
                return
            prefix = self.loaded.get(row.image)
            if prefix is None or not prefix.ready:
                continue
            count = min(row.length, budget)
            if not self.blocks.can_hold(row, count):
                return
            self.blocks.hold(row, count)
            self.waiting.remove(row)
            self.running.append(row)
            plan.prefill.append(Chunk(row, 0, count))
            budget -= count

    def _finish(self, row: Row) -> None:
        # Running, or preempted (waiting) when the eos it had sampled became known.
        (self.running if row in self.running else self.waiting).remove(row)
        row.ended = True
        self.blocks.release(row)
        prefix = self.loaded[row.image]
        prefix.rows_left -= 1
        if prefix.rows_left == 0:
            self.blocks.release(prefix)
            del self.loaded[row.image]
