"""Before a run: its blocks and tiles (the engine's own layout), its time (one tile measured) and its memory.

The geometry follows :func:`napari_hires.engine.plan_prediction` exactly (same layout, block side and context
boxes), so the tile count is what the run will do. Seconds come from timing the model on one tile on the chosen
device, cached per model, device, precision and tile. Memory is what the block pipeline holds: the input blocks
read ahead and the output blocks waiting to be written on the host, and on the device the weights, one batch of
tiles with the model's activations, and the block's blend accumulators.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_hires.engine.options import RunOptions
from napari_hires.engine.tiling import Box, TileLayout, context_box

#: Input blocks the pipeline holds at once (prefetched, being read, being predicted), and output blocks.
INPUT_BLOCKS_IN_FLIGHT = 4
OUTPUT_BLOCKS_IN_FLIGHT = 3
#: Activations alive at once in a forward pass, as a multiple of the largest single layer output.
ACTIVATION_FACTOR = 3

_speed_cache: dict[tuple, tuple[float, int]] = {}
_speed_lock = threading.Lock()


@dataclass(frozen=True)
class RunGeometry:
    """What a run over a scope amounts to: blocks, tiles and the largest input read for one block."""

    layout: TileLayout
    block: int  # output block side
    blocks: int
    tiles: int
    context_pixels: int  # input pixels of the largest block with its context
    output_pixels: int  # output pixels of one whole block
    tile_pixels: int = 0  # input pixels of all the tiles (tiles may stretch to fit a block)


@dataclass(frozen=True)
class Estimate:
    """Time and memory a run is expected to take."""

    geometry: RunGeometry
    seconds: float
    host_bytes: int
    device_bytes: int
    device: str

    def describe(self) -> str:
        """One line for a form: blocks, tiles, time and memory."""
        g = self.geometry
        memory = (f"~{format_bytes(self.host_bytes + self.device_bytes)} RAM" if self.device == "cpu"
                  else f"~{format_bytes(self.host_bytes)} RAM + ~{format_bytes(self.device_bytes)} {self.device}")
        return f"{g.blocks} blocks, {g.tiles} tiles · ~{format_seconds(self.seconds)} · {memory}"


def run_geometry(
    shape: tuple[int, int],
    model: Any,
    options: RunOptions | None = None,
    *,
    region: tuple[int, int, int, int] | None = None,
    **changes: Any,
) -> RunGeometry:
    """Blocks and tiles of ``model`` over ``region`` (or all) of a ``shape`` image, laid out as the engine does with
    ``options`` (a :class:`RunOptions`, or its fields as keywords)."""
    layout, _, block, _ = RunOptions.of(options, **changes).grid(model)
    h, w = shape
    bounds = Box(0, h, 0, w)
    target = bounds if region is None else Box(*region).intersect(bounds)
    if target is None:
        return RunGeometry(layout, block, 0, 0, 0, block * block)
    if model.task == "classification":
        return _heatmap_geometry(shape, target, layout, block)
    rows = _dense_spans(target.y0, target.y1, h, block, layout, axis=0)
    cols = _dense_spans(target.x0, target.x1, w, block, layout, axis=1)
    return RunGeometry(
        layout, block, blocks=len(rows) * len(cols), tiles=sum(n for n, _, _ in rows) * sum(n for n, _, _ in cols),
        context_pixels=max(c for _, c, _ in rows) * max(c for _, c, _ in cols), output_pixels=block * block,
        tile_pixels=sum(n * t for n, _, t in rows) * sum(n * t for n, _, t in cols),
    )


def _dense_spans(lo: int, hi: int, size: int, block: int, layout: TileLayout,
                 axis: int) -> list[tuple[int, int, int]]:
    """(tiles along this axis, context length, tile length) of each block row (axis 0) or column (axis 1) the
    target meets."""
    spans = []
    for start in range(lo // block * block, hi, block):
        want = (max(lo, start), min(hi, start + block, size))
        box = Box(*want, 0, 1) if axis == 0 else Box(0, 1, *want)
        image = Box(0, size, 0, 1) if axis == 0 else Box(0, 1, 0, size)
        ctx = context_box(box, image, layout)
        a, b = (ctx.y0, ctx.y1) if axis == 0 else (ctx.x0, ctx.x1)
        length, starts = layout.axis(a, b)
        spans.append((len(starts), b - a, min(length, b - a)))
    return spans


def _heatmap_geometry(shape: tuple[int, int], target: Box, layout: TileLayout, block: int) -> RunGeometry:
    """Classification: one tile per output pixel of every output block that meets the target."""
    stride = layout.tile - layout.overlap
    out = (math.ceil(shape[0] / stride), math.ceil(shape[1] / stride))
    rows = _heatmap_spans(target.y0, target.y1, out[0], stride, block)
    cols = _heatmap_spans(target.x0, target.x1, out[1], stride, block)
    side = lambda n: (n - 1) * stride + layout.tile  # noqa: E731 - input read for n heatmap pixels
    return RunGeometry(
        layout, block, blocks=len(rows) * len(cols), tiles=sum(rows) * sum(cols),
        context_pixels=side(max(rows)) * side(max(cols)), output_pixels=block * block,
        tile_pixels=sum(rows) * sum(cols) * layout.tile ** 2,
    )


def _heatmap_spans(lo: int, hi: int, out_size: int, stride: int, block: int) -> list[int]:
    """Output pixels of each heatmap block along one axis whose input pixels meet [lo, hi)."""
    first, last = lo // stride // block, (math.ceil(hi / stride) - 1) // block
    return [min(out_size, (b + 1) * block) - b * block for b in range(first, last + 1)]


def measure_tile(model: Any, *, tile: int, device: str = "auto", precision: str = "auto") -> tuple[float, int]:
    """Seconds per tile and activation bytes per tile of ``model`` on ``device``: a warm call on one random tile, after
    an untimed first one (cached per model, device, precision and tile)."""
    import torch

    from napari_hires.engine.runner import TileRunner

    runner = TileRunner(model, device=device, precision=precision, batch=1)
    key = (type(model).__name__, model.name, repr(model.config),
           str(runner.device), str(runner.amp_dtype), tile)
    with _speed_lock:
        if key in _speed_cache:
            return _speed_cache[key]
    pixels = np.random.default_rng(0).integers(0, 255, (1, tile, tile, model.in_channels), dtype=np.uint8)
    largest = [0]

    def record(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    hooks = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        runner.run_batch(pixels)  # the first call pays one-off costs (kernels, allocator, caches): not timed
    finally:
        for hook in hooks:
            hook.remove()
    _sync(runner.device)
    start = time.perf_counter()
    runner.run_batch(pixels)
    _sync(runner.device)
    seconds = time.perf_counter() - start
    result = (seconds, ACTIVATION_FACTOR * largest[0])
    with _speed_lock:
        _speed_cache[key] = result
    return result


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate_run(
    shape: tuple[int, int],
    dtype: Any,
    model: Any,
    options: RunOptions | None = None,
    *,
    region: tuple[int, int, int, int] | None = None,
    **changes: Any,
) -> Estimate:
    """Expected seconds and memory of a run with ``options`` (as for :func:`run_geometry`; the batch the run would
    use). Times a tile of ``model``: call it off the UI thread."""
    from napari_hires.engine.device import resolve_device

    options = RunOptions.of(options, **changes)
    geometry = run_geometry(shape, model, options, region=region)
    per_tile, activations = measure_tile(model, tile=geometry.layout.tile, device=options.device,
                                         precision=options.precision)
    batch = options.batch_for()
    itemsize = np.dtype(dtype).itemsize
    out_channels = model.out_channels
    out_itemsize = 2 if model.task == "classification" else (1 if model.task == "segmentation" else itemsize)
    host = (INPUT_BLOCKS_IN_FLIGHT * geometry.context_pixels * model.in_channels * itemsize
            + OUTPUT_BLOCKS_IN_FLIGHT * geometry.output_pixels * out_itemsize
            * (out_channels if model.task != "segmentation" else 1))
    tile_px = geometry.layout.max_tile ** 2
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    accumulators = 0 if model.task == "classification" else (out_channels + 1) * geometry.context_pixels * 4
    dev = weights + batch * (tile_px * (model.in_channels + 2 * out_channels) * 4 + activations) + accumulators
    seconds = geometry.tile_pixels / geometry.layout.tile ** 2 * per_tile  # per_tile: one tile of the set size
    return Estimate(geometry, seconds, int(host), int(dev), resolve_device(options.device).type)


def stored_progress(out: str | Path) -> tuple[int, int] | None:
    """(blocks done, blocks) of an unfinished prediction store at ``out``; None when there is none to resume."""
    from napari_hires.io.pyramid_store import read_journal

    journal = read_journal(out)
    if journal is None:
        return None
    return int(np.count_nonzero(journal)), int(journal.size)


def format_seconds(seconds: float) -> str:
    """Seconds as a short human duration: 45 s, 3 min 20 s, 2 h 05 min."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def format_bytes(n: float) -> str:
    """Bytes in binary units: 512 B, 3.2 MiB, 1.5 GiB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"
