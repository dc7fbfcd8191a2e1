"""Viewport preview: the model over one rectangle of one pyramid level, newest request first, cached by tile.

A widget asks for the region in view whenever the camera stops. :class:`PreviewService` keeps the model loaded,
runs one request at a time on its own thread, cancels every older request (queued or running, between tile
batches), and caches results per fixed, level-aligned cell, so that panning back or overlapping viewports reuse
what was computed. Each cell is predicted with its full context, exactly as :func:`predict` would predict it.
Cells default to one tile stride (the tile less its overlap), so that each cell is one tile with its context. A
request may ask for partial results: cells are then computed from the centre of the view outwards and the view is
handed over as they land (cells still to come show the input), so a slow model shows something within a tile's time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Callable

import numpy as np

from napari_hires.engine.regions import channel_adapter, classify_pixels, dense_output, heatmap_input, read_padded
from napari_hires.engine.runner import CancelToken, Cancelled, TileRunner
from napari_hires.engine.source import ImageSource, as_source
from napari_hires.engine.tiling import Box, TileLayout, context_box, layout_for
from napari_hires.errors import HiresError
from napari_hires.io.pyramid import Pyramid


def output_step(task: str, layout: TileLayout) -> int:
    """Level pixels per output pixel: 1 for dense outputs, the tile stride for classification heatmaps."""
    return layout.tile - layout.overlap if task == "classification" else 1


def predict_rectangle(
    runner: TileRunner, source: ImageSource, box: Box, layout: TileLayout, cancel: CancelToken | None = None
) -> np.ndarray:
    """The model's output over ``box`` of ``source``, as :func:`predict` would write it there.

    Restoration: (y, x, c) pixels in the input dtype; segmentation: (y, x) labels; classification: a float16
    (classes, rows, cols) heatmap of the output pixels whose tiles cover ``box`` (one per ``output_step`` pixels).
    """
    inside = box.intersect(source.bounds)
    if inside != box:
        raise HiresError(f"box {box} is not inside {source.name} (0..{source.shape[0]}, 0..{source.shape[1]}); "
                         "clip it to the image first")
    adapt = channel_adapter(source.channels, runner.model.in_channels, source.name)
    if runner.task == "classification":
        return _heatmap(runner, source, box, layout, adapt, cancel)
    context = context_box(box, source.bounds, layout)
    out, _ = runner.predict_region(adapt(source.read(context)), context, source.bounds, layout, cancel,
                                   source.input_range)
    out = out[:, box.y0 - context.y0:box.y1 - context.y0, box.x0 - context.x0:box.x1 - context.x0]
    return dense_output(out, runner.task, source.dtype)


def _heatmap(runner: TileRunner, source: ImageSource, box: Box, layout: TileLayout,
             adapt: Callable[[np.ndarray], np.ndarray], cancel: CancelToken | None) -> np.ndarray:
    """Class probabilities per output pixel under ``box``: each from the tile centred on that pixel's stride cell."""
    out = _out_box(box, output_step("classification", layout))
    pixels = read_padded(source, heatmap_input(out, layout), adapt)
    return classify_pixels(runner, pixels, out.shape, layout, cancel, source.input_range)[0]


def _out_box(box: Box, step: int) -> Box:
    """The output pixels whose level-pixel cells meet ``box``."""
    return Box(box.y0 // step, math.ceil(box.y1 / step), box.x0 // step, math.ceil(box.x1 / step))


def _crop(data: np.ndarray, outer: Box, inner: Box, heatmap: bool) -> np.ndarray:
    """The part of ``data`` (covering output box ``outer``) under output box ``inner``."""
    ys, xs = slice(inner.y0 - outer.y0, inner.y1 - outer.y0), slice(inner.x0 - outer.x0, inner.x1 - outer.x0)
    return data[:, ys, xs] if heatmap else data[ys, xs]


def _rectangles(cells: list[Box]) -> list[Box]:
    """Cells merged into few rectangles (runs along x, then equal runs along y): fewer tiles than cell by cell."""
    runs: list[Box] = []
    for c in sorted(cells, key=lambda b: (b.y0, b.x0)):
        last = runs[-1] if runs else None
        if last is not None and (last.y0, last.y1, last.x1) == (c.y0, c.y1, c.x0):
            runs[-1] = Box(last.y0, last.y1, last.x0, c.x1)
        else:
            runs.append(c)
    rects: list[Box] = []
    for run in runs:
        for i, r in enumerate(rects):
            if r.y1 == run.y0 and (r.x0, r.x1) == (run.x0, run.x1):
                rects[i] = Box(r.y0, run.y1, r.x0, r.x1)
                break
        else:
            rects.append(run)
    return rects


@dataclass(frozen=True)
class PreviewResult:
    """A finished preview: ``data`` over ``box`` of pyramid ``level``, placed in world units by scale/translate."""

    level: int
    box: Box  # level pixels, clipped to the level
    data: np.ndarray  # as predict_rectangle returns it
    scale: tuple[float, float]  # world (y, x) size of one pixel of ``data``
    translate: tuple[float, float]  # world (y, x) of data[0, 0] (data[:, 0, 0] for heatmaps), as predict places it
    missing: int = 0  # cells not computed yet (a partial result shows the input there, or zeros); 0 when final
    cells: int = 0  # cells the box meets


#: Called on the service's thread with a partial result of a request, as its cells land.
Partial = Callable[[PreviewResult], None]


@dataclass
class _Request:
    level: int
    box: Box
    future: Future
    token: CancelToken
    partial: Partial | None = None


class PreviewService:
    """One model, loaded once, previewing one pyramid on a worker thread; the newest request cancels older ones."""

    def __init__(
        self,
        runner: TileRunner,
        pyramid: Pyramid,
        layout: TileLayout | None = None,
        *,
        cell: int | None = None,
        cache_bytes: int = 256 * 2**20,
        partial_every: float = 0.1,
    ) -> None:
        """``cell``: side of the cached cells in level pixels (default: one tile stride); ``partial_every``: the
        shortest time in seconds between two partial results of one request (a fast device would otherwise flood
        the viewer with them)."""
        net = runner.model
        self.runner, self.pyramid = runner, pyramid
        self.layout = layout or layout_for(net)
        self.step = output_step(runner.task, self.layout)
        if cell is None:
            cell = self.layout.tile - self.layout.overlap
        if cell < 1:
            raise HiresError(f"cell must be a positive number of pixels, got {cell}")
        self.cell = math.ceil(cell / self.step) * self.step  # heatmap cells hold whole output pixels
        self.cache_bytes = cache_bytes
        self.partial_every = partial_every
        self._cache: OrderedDict[tuple[int, Box], np.ndarray] = OrderedDict()
        self._cached = 0
        self._sources: dict[int, ImageSource] = {}
        first = self._source(0)
        channel_adapter(first.channels, net.in_channels, first.name)  # a model for other images fails here, at once
        first.input_range  # so does a float image with no range to scale it by
        self._lock = threading.Condition()
        self._pending: _Request | None = None
        self._running: _Request | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="hires-preview", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public
    @property
    def cache_info(self) -> tuple[int, int]:
        """(cells, bytes) held in the cache."""
        return len(self._cache), self._cached

    def request(self, level: int, box: Box | tuple[int, int, int, int],
                partial: Partial | None = None) -> "Future[PreviewResult]":
        """Preview ``box`` (y0, y1, x0, x1 in pixels of ``level``, clipped to it); every older request is cancelled.

        A cancelled request's Future ends cancelled. A box whose cells are all cached resolves at once. With
        ``partial``, cells are computed centre first and ``partial`` gets the view as they land (from this
        service's thread: after the first cell, then at most every ``partial_every`` seconds); the Future still
        holds the final result.
        """
        with self._lock:
            if self._closed:
                raise HiresError("the preview service is closed; start a new one")
            source = self._source(level)
            clipped = (box if isinstance(box, Box) else Box(*(int(v) for v in box))).intersect(source.bounds)
            if clipped is None:
                raise HiresError(f"box {box} does not overlap level {level} of {self.pyramid.name} "
                                 f"(0..{source.shape[0]}, 0..{source.shape[1]})")
            for old in (self._pending, self._running):
                if old is not None:
                    old.future.cancel()
            self._pending = None
            req = _Request(level, clipped, Future(), CancelToken(), partial)
            req.future.add_done_callback(lambda f, token=req.token: token.cancel() if f.cancelled() else None)
            have = self._lookup(level, self._cells(clipped, source.bounds))
            if all(data is not None for data in have.values()):
                req.future.set_result(self._assemble(req, have))
                return req.future
            self._pending = req
            self._lock.notify_all()
        return req.future

    def close(self) -> None:
        """Cancel what is queued or running and stop the worker thread."""
        with self._lock:
            self._closed = True
            for old in (self._pending, self._running):
                if old is not None:
                    old.future.cancel()
            self._lock.notify_all()
        self._thread.join()

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()

    def __enter__(self) -> "PreviewService":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._lock:
                while self._pending is None and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                req, self._pending = self._pending, None
                self._running = req
            try:
                _settle(req.future, result=self._compute(req))
            except Cancelled:
                pass  # its Future was cancelled by whoever cancelled the token
            except BaseException as err:  # handed to whoever waits on the Future
                _settle(req.future, error=err)
            finally:
                with self._lock:
                    self._running = None

    def _compute(self, req: _Request) -> PreviewResult:
        """Predict the request's missing cells, merged into few rectangles, cache them, and assemble the viewport.

        With a ``partial`` callback the cells go one by one from the centre of the view outwards and the view is
        handed over as they land: something to see within one tile's time.
        """
        source = self._source(req.level)
        with self._lock:
            have = self._lookup(req.level, self._cells(req.box, source.bounds))
        heatmap = self.step > 1
        missing = [c for c, data in have.items() if data is None]
        if req.partial is None:
            units = _rectangles(missing)
        else:  # cell by cell from the centre out: with cells of one tile stride this costs no more tiles
            cy, cx = req.box.y0 + req.box.y1, req.box.x0 + req.box.x1
            units = sorted(missing, key=lambda c: (c.y0 + c.y1 - cy) ** 2 + (c.x0 + c.x1 - cx) ** 2)
        shown: float | None = None  # when the last partial result was handed over (the first goes at once)
        backdrop: np.ndarray | None = None  # what cells still to come show, read once per request
        for i, rect in enumerate(units):
            req.token.check()
            data = predict_rectangle(self.runner, source, rect, self.layout, req.token)
            outer = _out_box(rect, self.step)
            for c in have:
                if c.intersect(rect) is not None:
                    have[c] = np.ascontiguousarray(_crop(data, outer, _out_box(c, self.step), heatmap))
                    with self._lock:
                        self._store((req.level, c), have[c])
            if req.partial is not None and i + 1 < len(units) and (
                    shown is None or time.perf_counter() - shown >= self.partial_every):
                req.token.check()
                if shown is None:
                    backdrop = self._backdrop(source, list(have), have[units[0]])
                req.partial(self._assemble(req, have, backdrop))
                shown = time.perf_counter()
        return self._assemble(req, have)

    # ------------------------------------------------------------------ cells and cache
    def _source(self, level: int) -> ImageSource:
        if level not in self._sources:
            self._sources[level] = as_source(self.pyramid, level)
        return self._sources[level]

    def _cells(self, box: Box, bounds: Box) -> list[Box]:
        """The level-aligned cells of ``self.cell`` pixels (clipped to the level) that ``box`` meets."""
        n = self.cell
        return [
            Box(y, min(y + n, bounds.y1), x, min(x + n, bounds.x1))
            for y in range(box.y0 // n * n, box.y1, n)
            for x in range(box.x0 // n * n, box.x1, n)
        ]

    def _lookup(self, level: int, cells: list[Box]) -> dict[Box, np.ndarray | None]:
        """Cached data of each cell (None where missing), marking hits as recently used; call with the lock held."""
        have: dict[Box, np.ndarray | None] = {}
        for c in cells:
            have[c] = self._cache.get((level, c))
            if have[c] is not None:
                self._cache.move_to_end((level, c))
        return have

    def _store(self, key: tuple[int, Box], data: np.ndarray) -> None:
        """Cache one cell, dropping the least recently used ones beyond ``cache_bytes``; call with the lock held."""
        old = self._cache.pop(key, None)
        self._cached -= 0 if old is None else old.nbytes
        self._cache[key] = data
        self._cached += data.nbytes
        while self._cached > self.cache_bytes and self._cache:
            self._cached -= self._cache.popitem(last=False)[1].nbytes

    def _assemble(self, req: _Request, have: dict[Box, np.ndarray | None],
                  backdrop: np.ndarray | None = None) -> PreviewResult:
        """The cells' data stitched and cropped to the requested box, with its world placement; cells not computed
        yet show ``backdrop`` (covering all the cells), or zeros."""
        heatmap = self.step > 1
        cells = list(have)
        union = Box(cells[0].y0, cells[-1].y1, cells[0].x0, cells[-1].x1)
        outer, inner = _out_box(union, self.step), _out_box(req.box, self.step)
        first = next(data for data in have.values() if data is not None)
        lead, tail = (first.shape[:1], ()) if heatmap else ((), first.shape[2:])
        canvas = backdrop.copy() if backdrop is not None else np.zeros(lead + outer.shape + tail, first.dtype)
        for c, data in have.items():
            if data is not None:
                o = _out_box(c, self.step)
                where = (slice(o.y0 - outer.y0, o.y1 - outer.y0), slice(o.x0 - outer.x0, o.x1 - outer.x0))
                canvas[(slice(None), *where) if heatmap else where] = data
        source = self._source(req.level)
        (sy, sx), (ty, tx) = source.scale, source.translation
        return PreviewResult(
            level=req.level, box=req.box, data=_crop(canvas, outer, inner, heatmap),
            scale=(sy * self.step, sx * self.step),
            translate=(ty + inner.y0 * self.step * sy, tx + inner.x0 * self.step * sx),
            missing=sum(data is None for data in have.values()), cells=len(have),
        )

    def _backdrop(self, source: ImageSource, cells: list[Box], sample: np.ndarray) -> np.ndarray | None:
        """What a partial result shows where cells are still to come: the input pixels under ``cells`` when the
        model restores images of the input's shape (``sample`` is one computed cell), else None (zeros)."""
        if self.runner.task != "restoration":
            return None
        pixels = source.read(Box(cells[0].y0, cells[-1].y1, cells[0].x0, cells[-1].x1))
        if pixels.shape[-1] == 1 and sample.ndim == 2:
            pixels = pixels[..., 0]
        return pixels if pixels.shape[2:] == sample.shape[2:] and pixels.dtype == sample.dtype else None


def _settle(future: Future, result: PreviewResult | None = None, error: BaseException | None = None) -> None:
    """Finish ``future`` unless a newer request cancelled it meanwhile."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
