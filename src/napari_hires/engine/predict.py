"""``predict``: a model over a whole image (or a rectangle, or a mask) into a resumable OME-Zarr store.

The output is cut into blocks aligned with the store's chunks; each block is predicted from its own pixels plus a
margin of context, blended, and written once (DESIGN.md, "blocks own their output"). A reader thread fetches the
next blocks while the model runs and writer threads encode and store finished ones, so the device rarely waits and
memory holds a few blocks whatever the image size.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator, Union

import numpy as np

from napari_hires.engine.events import BlockWritten, Finishing, Planned, block_progress, drain
from napari_hires.engine.intensity import InputRange
from napari_hires.engine.options import RunOptions
from napari_hires.engine.output import OutputSpec, create_output, run_record, weights_digest
from napari_hires.engine.resolution import LevelChoice, choose_level, region_at
from napari_hires.engine.regions import channel_adapter, classify_pixels, dense_output, heatmap_input, read_padded
from napari_hires.engine.runner import CancelToken, Cancelled, TileRunner
from napari_hires.engine.source import ImageSource, as_source, opened
from napari_hires.engine.tiling import Box, TileLayout, context_box
from napari_hires.errors import HiresError, UntrainedModelWarning
from napari_hires.io.job_identity import content_identity
from napari_hires.io.output_lock import OutputLock, lock_output
from napari_hires.io.output_path import check_output, check_writable
from napari_hires.models.base import HiresModel

#: progress(done_blocks, total_blocks, box): box is the output block just written (output level-0 pixels).
Progress = Callable[[int, int, Box], None]
#: What a run's generator yields.
RunEvent = Union[Planned, BlockWritten, Finishing]


@dataclass
class PredictionResult:
    """What a run did: where it wrote, how much, how fast, and whether it finished."""

    path: str
    task: str
    pixels: int  # input pixels predicted by this run
    seconds: float
    tiles: int  # tiles the model ran on
    tile_pixels: int  # input pixels of those tiles
    blocks_done: int  # written by this run
    blocks_skipped: int  # found done by an earlier run
    blocks_total: int
    cancelled: bool = False
    layout: TileLayout | None = field(default=None, repr=False)
    input_range: InputRange | None = None  # the raw values that were the model's 0..1
    level: int = 0  # the pyramid level predicted
    resolution_note: str = ""  # the model's and the level's pixel sizes, when both are known

    @property
    def overlap_factor(self) -> float:
        """k: input-tile pixels the model saw per image pixel predicted (1.0 means no overlap at all)."""
        return self.tile_pixels / self.pixels if self.pixels else float("nan")

    @property
    def megapixels_per_second(self) -> float:
        return self.pixels / self.seconds / 1e6 if self.seconds else float("nan")

    @property
    def scaling_note(self) -> str:
        """How the input was scaled, as a report's last words ("; input uint16 scaled from 0..65535"); empty in the
        plain 8-bit case, where there is nothing to say."""
        scaled = self.input_range
        return "" if scaled is None or scaled.plain else f"; {scaled.describe()}"

    @property
    def resolution_words(self) -> str:
        """The level chosen for the model's pixel size, as a report's last words; empty when no size is known."""
        return f"; {self.resolution_note}" if self.resolution_note else ""


def resolve_model(model: str | os.PathLike | HiresModel, *, untrained_ok: bool = False) -> HiresModel:
    """:func:`napari_hires.models.create_model` of ``model``; one without trained weights warns that its output is
    random, unless ``untrained_ok`` (training it, for instance)."""
    from napari_hires.models.registry import create_model

    net = create_model(model)
    if not untrained_ok:
        warn_if_untrained(net)
    return net


def warn_if_untrained(net: HiresModel) -> None:
    """Warn that ``net`` is an architecture's random initialisation (its output is random), if so."""
    from napari_hires.models.registry import untrained_note

    if net.trained is False:
        warnings.warn(untrained_note(net.name), UntrainedModelWarning, stacklevel=3)


@dataclass
class RunCounts:
    """What a run's blocks added up to: input pixels predicted, tiles run and their input pixels, blocks written."""

    pixels: int = 0
    tiles: int = 0
    tile_pixels: int = 0
    blocks: int = 0

    def add(self, other: RunCounts) -> None:
        self.pixels += other.pixels
        self.tiles += other.tiles
        self.tile_pixels += other.tile_pixels
        self.blocks += other.blocks


@dataclass
class PredictionPlan:
    """Everything decided before the first tile runs: input, model, layout, output store and the blocks to do."""

    source: ImageSource
    net: HiresModel
    layout: TileLayout
    spec: OutputSpec
    classify: bool
    stride: int
    todo: list[tuple[tuple[int, int], Box, Box]]  # (journal index, output box, input box to predict)
    skipped: int  # blocks an earlier run of the same job finished
    options: RunOptions = field(default_factory=RunOptions)
    lock: OutputLock | None = None  # this run's hold on the output, until close()
    resolution: LevelChoice = field(default_factory=lambda: LevelChoice(0))  # the level predicted, and why
    region: tuple[int, int, int, int] | None = None  # the rectangle predicted, in pixels of that level

    @property
    def complete(self) -> bool:
        """The same job finished the store earlier: nothing to predict, nothing to finish."""
        return self.spec.complete

    def close(self) -> None:
        """Release the output for other runs (after finishing, cancelling or failing); idempotent."""
        if self.lock is not None:
            self.lock.release()

    def result(self, path: str, seconds: float, counts: RunCounts) -> PredictionResult:
        """What the run did, from what its blocks added up to (the one builder, locally and on a cluster); it was
        cancelled when it wrote fewer blocks than it had to do."""
        return PredictionResult(
            path=path, task=self.net.task, pixels=counts.pixels, seconds=seconds, tiles=counts.tiles,
            tile_pixels=counts.tile_pixels, blocks_done=counts.blocks, blocks_skipped=self.skipped,
            blocks_total=len(self.todo) + self.skipped, cancelled=counts.blocks < len(self.todo),
            layout=self.layout, input_range=self.source.input_range, level=self.resolution.level,
            resolution_note=self.resolution.note,
        )


def plan_prediction(
    image: Any,
    model: str | os.PathLike | HiresModel,
    out: str | os.PathLike,
    options: RunOptions | None = None,
    *,
    level: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    mask: Any = None,
    overwrite: bool = False,
    hold_lock: bool = True,
    **changes: Any,
) -> PredictionPlan:
    """Resolve the input and model, lay out tiles and blocks, and create (or reopen, to resume) the output store.

    ``options`` (:class:`RunOptions`, or its fields as keywords) say how; ``level``, ``region`` and ``mask`` what.
    The output is checked first (not the input, nor around or inside it; writable) and locked for this run: call
    :meth:`PredictionPlan.close` when done. ``hold_lock=False`` is for the workers of a run whose client holds it.
    A store begun by the same job resumes; one that the same job completed is reopened with nothing to do.
    """
    options = RunOptions.of(options, **changes)
    image = opened(image)
    source = as_source(image, level or 0)
    model_file = os.fspath(model) if isinstance(model, (str, os.PathLike)) and os.path.exists(model) else None
    check_output(out, [source.path, model_file])
    check_writable(out)
    net = resolve_model(model, untrained_ok=True)  # warned below, once the run is sure to start
    resolution = choose_level(image, net.card, level, warn=hold_lock)  # a cluster's workers repeat no warning
    if resolution.level != (level or 0):
        source, region = as_source(image, resolution.level), region_at(region, image, resolution.level)
    channel_adapter(source.channels, net.in_channels, source.name)
    layout, chunk, block, factor = options.grid(net)
    bounds = source.bounds
    target = bounds if region is None else _check_region(region, bounds)
    card = net.card
    class_names = dict(card.class_names) if card and card.class_names else {
        i: f"class {i}" for i in range(net.out_channels)}
    stride = layout.tile - layout.overlap
    classify = net.task == "classification"
    if block % chunk:
        raise HiresError(f"block {block} must be a multiple of the chunk {chunk}, so that blocks own whole chunks")
    out_shape = (math.ceil(source.shape[0] / stride), math.ceil(source.shape[1] / stride)) if classify else source.shape
    probabilities = options.probabilities
    run = run_record(
        input=source.origin, shape=source.shape, dtype=str(source.dtype), model=net.name or type(net).__name__,
        weights=weights_digest(net), task=net.task, tile=layout.tile, max_tile=layout.max_tile,
        margin=layout.margin, blend=layout.blend, block=block, chunk=chunk, probabilities=probabilities, region=region,
        mask=None if mask is None else _mask_digest(mask), content=content_identity(source.array, source.path),
        input_range=source.input_range.record(),
    )
    lock = lock_output(out) if hold_lock else None
    try:
        spec = create_output(
            out, task=net.task, shape=out_shape, channels=net.out_channels, dtype=source.dtype,
            class_names=class_names, class_colors=dict(card.class_colors) if card else {},
            scale=tuple(s * factor for s in source.scale), translation=source.translation,
            name=f"{source.name} ({net.name or net.task})", chunk=chunk, block=block,
            probabilities=probabilities, overwrite=overwrite, run=run,
        )
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    done = spec.done()
    todo, skipped = [], 0
    for index, box in spec.block_boxes():
        want = _to_input(box, factor, bounds).intersect(target)
        if want is None or not _mask_covers(mask, want, bounds):
            continue
        if done[index]:
            skipped += 1
            continue
        todo.append((index, box, want))
    if isinstance(model, (str, os.PathLike)) and model_file is None:
        warn_if_untrained(net)
    return PredictionPlan(source, net, layout, spec, classify, stride, todo, skipped, options, lock, resolution,
                          region)


def planned_run(plan: PredictionPlan, out: str, blocks: Callable[[], Generator[BlockWritten, None, RunCounts]],
                started: float) -> Generator[RunEvent, None, PredictionResult]:
    """The one path of a run once planned, whatever runs the blocks (this process or a cluster): yields Planned,
    the blocks' events and Finishing, finishes the store unless cancelled, and releases the output however it
    ends; returns the result (written to ``out``). ``blocks`` is called after Planned; ``started`` is the run's
    ``time.perf_counter()`` at its start."""
    try:
        yield Planned(plan)
        counts = yield from blocks()
        if counts.blocks == len(plan.todo) and not plan.complete:
            yield Finishing()
            plan.spec.finish()
        return plan.result(out, time.perf_counter() - started, counts)
    finally:
        plan.close()


def run_prediction(
    image: Any,
    model: str | os.PathLike | HiresModel,
    out: str | os.PathLike,
    options: RunOptions | None = None,
    *,
    level: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    mask: Any = None,
    overwrite: bool = False,
    cancel: CancelToken | None = None,
    model_thread: bool = True,
) -> Generator[RunEvent, None, PredictionResult]:
    """A prediction as a generator (arguments as for :func:`predict`): yields :class:`Planned` once the output store
    exists, :class:`BlockWritten` per written block (in order) and :class:`Finishing` before the coarser levels and
    metadata; returns the :class:`PredictionResult`. Closing it early stops the run, leaving a resumable store.
    ``model_thread`` as for :meth:`BlockJob.run` (``predict``, which only drains the run, turns it off)."""
    started = time.perf_counter()
    plan = plan_prediction(image, model, out, options, level=level, region=region, mask=mask, overwrite=overwrite)
    return (yield from planned_run(plan, str(out), lambda: BlockJob(plan, cancel).run(model_thread=model_thread),
                                      started))


def predict(
    image: Any,
    model: str | os.PathLike | HiresModel,
    out: str | os.PathLike,
    options: RunOptions | None = None,
    *,
    level: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    mask: Any = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    **changes: Any,
) -> PredictionResult:
    """Predict ``image`` (a Pyramid, path or array; ``level`` of it) with ``model`` into the OME-Zarr store ``out``.

    ``options`` (:class:`RunOptions`, or any of its fields as keywords: ``tile``, ``overlap``, ``batch``, ``block``,
    ``chunk``, ``device``, ``precision``, ``probabilities``, ``prefetch``, ``live_pyramid``) say how: ``overlap``
    defaults to the model's halo plus a cross-fade, ``tile`` to the model's ``tile_size``, ``batch`` to the device's.
    ``level`` left None is the one whose pixel size matches the model card's (level 0 when either has none; see
    engine/resolution.py: a level more than 25 % off the card's warns, and a coarser level chosen says so).
    ``region`` (y0, y1, x0, x1 in pixels of that level; of level 0 when the level is left to choose) or ``mask`` (a
    2-d boolean array at any resolution covering the image; blocks it leaves empty are skipped) limit the work.
    Rerunning the same call resumes an interrupted run (on the same input content; a changed input is refused,
    saying what changed) and finds a finished one complete, doing nothing; ``overwrite`` starts again. One run at a time writes an output (a lock beside it).
    ``live_pyramid`` refreshes the coarser levels under each block as it is written, so that a viewer shows the
    result filling in at every zoom. ``progress(done, total, box)`` hears of each written block.
    """
    steps = run_prediction(image, model, out, RunOptions.of(options, **changes), level=level, region=region,
                           mask=mask, overwrite=overwrite, cancel=cancel, model_thread=False)
    return drain(steps, block_progress(progress))


def _check_region(region: tuple[int, int, int, int], bounds: Box) -> Box:
    y0, y1, x0, x1 = (int(v) for v in region)
    box = Box(y0, y1, x0, x1).intersect(bounds)
    if box is None or (y0, y1, x0, x1) != (box.y0, box.y1, box.x0, box.x1):
        raise HiresError(f"region {region} is not inside the image (0..{bounds.y1}, 0..{bounds.x1}); "
                         "give y0 < y1 <= height and x0 < x1 <= width")
    return box


def _to_input(box: Box, factor: int, bounds: Box) -> Box:
    """An output box in input pixels (classification outputs are one pixel per tile stride)."""
    return Box(box.y0 * factor, min(bounds.y1, box.y1 * factor), box.x0 * factor, min(bounds.x1, box.x1 * factor))


def _mask_covers(mask: Any, box: Box, bounds: Box) -> bool:
    """True when ``mask`` (any resolution, covering the image) has a True pixel under ``box``, or there is no mask."""
    if mask is None:
        return True
    mh, mw = mask.shape[-2:]
    fy, fx = mh / bounds.y1, mw / bounds.x1
    y0, y1 = int(box.y0 * fy), max(int(box.y0 * fy) + 1, math.ceil(box.y1 * fy))
    x0, x1 = int(box.x0 * fx), max(int(box.x0 * fx) + 1, math.ceil(box.x1 * fx))
    return bool(np.asarray(mask[y0:y1, x0:x1]).any())


def _mask_digest(mask: Any) -> str:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(np.asarray(mask, dtype=bool)).tobytes()).hexdigest()[:16]


class BlockJob:
    """One run's blocks: locally a pipeline (prefetching reader thread -> model thread -> writer threads -> journal),
    whose :meth:`run` yields each written block in order; on a cluster each worker calls :meth:`predict_block` for
    the blocks it is given. The model runs on the plan's device with its options' batch."""

    def __init__(self, plan: PredictionPlan, cancel: CancelToken | None = None) -> None:
        options = plan.options
        self.plan, self.runner = plan, TileRunner(plan.net, device=options.device, precision=options.precision,
                                                  batch=options.batch_for())
        self.source, self.layout, self.spec = plan.source, plan.layout, plan.spec
        self.adapt = channel_adapter(plan.source.channels, plan.net.in_channels, plan.source.name)
        self.classify, self.stride = plan.classify, plan.stride
        self.cancel = CancelToken(parent=cancel)  # also set when the consumer stops the run early
        self.counts = RunCounts()

    def predict_block(self, index: tuple[int, int], box: Box, want: Box) -> RunCounts:
        """Read, predict and write one block, then record it in the journal (no threads of its own); returns what it
        added up to."""
        context = self._context(box, want)
        arrays, counts = self._compute(box, want, self._read(context), context)
        self._write(index, box, arrays)
        return counts

    # -------------------------------------------------------------- pipeline
    def run(self, *, model_thread: bool = True) -> Generator[BlockWritten, None, RunCounts]:
        """Predict the plan's blocks: yields a :class:`BlockWritten` as each one is written and journalled, in
        order, while the next ones are read, predicted and written; returns the counts. Cancelling stops between
        two tile batches, after the blocks in flight are written; closing the generator early does the same.

        ``model_thread`` runs the model on a thread of its own, so that each block's event comes as soon as it is
        written (a widget's progress, Cancel on the first block); without it the model runs on the caller's thread,
        where torch's intra-op threads work best, and each event comes once the next block is computed (``predict``
        draining the run)."""
        todo, prefetch = self.plan.todo, self.plan.options.prefetch
        total, done = len(todo) + self.plan.skipped, self.plan.skipped
        inbox: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        stop = threading.Event()
        reader = threading.Thread(target=self._read_all, args=(todo, inbox, stop), name="hires-reader", daemon=True)
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="hires-writer") as writers:
            computed = self._computed(len(todo), inbox, stop, writers, lag=0 if model_thread else 1)
            model = None
            if model_thread:
                landed: queue.SimpleQueue = queue.SimpleQueue()  # (write future, counts, box) in order; then None
                model = threading.Thread(target=_hand_on, args=(computed, landed), name="hires-model", daemon=True)
                computed = iter(landed.get, None)
            reader.start()
            if model is not None:
                model.start()
            try:
                for item in computed:
                    if isinstance(item, BaseException):
                        raise item
                    future, counts, box = item
                    future.result()
                    self.counts.add(counts)
                    done += 1
                    yield BlockWritten(done, total, box)
            finally:
                self.cancel.cancel()  # a no-op when all is done; else the model stops between two batches
                stop.set()
                if model is not None:
                    model.join()
                while reader.is_alive():  # unblock a reader waiting on a full queue
                    try:
                        inbox.get_nowait()
                    except queue.Empty:
                        reader.join(0.05)
        return self.counts

    def _computed(self, count: int, inbox: queue.Queue, stop: threading.Event, writers: ThreadPoolExecutor, *,
                  lag: int) -> Iterator[tuple[Future, RunCounts, Box]]:
        """Blocks from the reader through the model to the writers, a bounded number of them computed but not yet
        written; yields each block's write in order, ``lag`` blocks behind the model (so that a consumer on the
        model's own thread waits on a write only once the next block is computed)."""
        pending: list[Future] = []
        held: list[tuple[Future, RunCounts, Box]] = []
        try:
            for _ in range(count):
                item = _take(inbox, stop)
                if item is None:
                    break
                index, box, want, pixels, context = item
                arrays, counts = self._compute(box, want, pixels, context)
                while len(pending) >= 2:  # bound computed-but-unwritten blocks (and surface write errors)
                    pending.pop(0).result()
                pending.append(writers.submit(self._write, index, box, arrays))
                held.append((pending[-1], counts, box))
                while len(held) > lag:
                    yield held.pop(0)
        except Cancelled:
            pass
        yield from held

    def _read_all(self, todo, inbox: queue.Queue, stop: threading.Event) -> None:
        try:
            for index, box, want in todo:
                if stop.is_set():
                    return
                context = self._context(box, want)
                pixels = self._read(context)
                while not stop.is_set():
                    try:
                        inbox.put((index, box, want, pixels, context), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as err:  # handed to the main thread, which re-raises it
            inbox.put(err)

    # -------------------------------------------------------------- one block
    def _context(self, box: Box, want: Box) -> Box:
        """Input read for a block: its pixels plus margin (dense), or the tiles of its heatmap pixels."""
        if self.classify:
            return heatmap_input(box, self.layout)
        return context_box(want, self.source.bounds, self.layout)

    def _read(self, context: Box) -> np.ndarray:
        return read_padded(self.source, context, self.adapt)

    def _compute(self, box: Box, want: Box, pixels: np.ndarray, context: Box) -> tuple[list[np.ndarray], RunCounts]:
        """The block's arrays as stored (one per output image, NGFF axis order), padded to the whole block where
        the scope cut it, and what the block adds up to."""
        before = self.runner.tile_pixels

        def counts(tiles: int) -> RunCounts:
            return RunCounts(want.shape[0] * want.shape[1], tiles, self.runner.tile_pixels - before, 1)

        if self.classify:
            heat, n = classify_pixels(self.runner, pixels, box.shape, self.layout, self.cancel,
                                      self.source.input_range)
            return [heat], counts(n)
        out, n = self.runner.predict_region(pixels, context, self.source.bounds, self.layout, self.cancel,
                                            self.source.input_range)
        out = out[:, want.y0 - context.y0:want.y1 - context.y0, want.x0 - context.x0:want.x1 - context.x0]
        pad = ((want.y0 - box.y0, box.y1 - want.y1), (want.x0 - box.x0, box.x1 - want.x1))
        values = dense_output(out, self.runner.task, self.source.dtype)
        if values.ndim == 3:  # (y, x, c) pixels into NGFF (c, y, x)
            values = np.moveaxis(values, -1, 0)
        arrays = [np.pad(values, ((0, 0),) * (values.ndim - 2) + pad)]
        if self.runner.task == "segmentation" and len(self.spec.stores) > 1:
            arrays.append(np.pad(out.half().cpu().numpy(), ((0, 0),) + pad))
        return arrays, counts(n)

    def _write(self, index: tuple[int, int], box: Box, arrays: list[np.ndarray]) -> None:
        self.spec.write_block(box, arrays)
        if self.plan.options.live_pyramid:
            self.spec.update_levels(box)
        self.spec.mark_done(index)


def _hand_on(computed: Iterator[Any], landed: queue.SimpleQueue) -> None:
    """The model thread: every computed block's write into ``landed`` (an error too, for the consumer to raise),
    then None."""
    try:
        for item in computed:
            landed.put(item)
    except BaseException as err:  # handed to the generator, which re-raises it
        landed.put(err)
    finally:
        landed.put(None)


def _take(inbox: queue.Queue, stop: threading.Event) -> Any:
    """The reader's next block (re-raising its error), or None once ``stop`` is set."""
    while not stop.is_set():
        try:
            item = inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(item, BaseException):
            raise item
        return item
    return None
