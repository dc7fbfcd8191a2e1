"""Coarser levels computed on demand for an image stored without a pyramid, so napari shows it multiscale.

napari reads a single-level image whole; a multiscale one only where it looks. A large single level therefore gets
lazy levels, each the 2 x 2 mean (mode for labels) of the level above, as ``napari-hires pyramid`` would store them:
opening reads nothing, a view of level k reads only the level-0 chunks under it. Zooming out still reads the whole
image (every pixel contributes), so the user is told once per file how to build a real pyramid.
"""

from __future__ import annotations

import warnings
from typing import Callable

import dask.array as da
import numpy as np

from napari_hires.errors import HiresWarning
from napari_hires.io.downsample import downsample_mean, downsample_mode
from napari_hires.io.pyramid import Pyramid

#: A single level larger than this on a side gets lazy coarser levels and the hint; up to it napari reads the plane
#: whole (at most 2048 x 2048 x 4 samples, 16 MB of uint8), which is quick.
OVERVIEW_ABOVE = 2048
#: Derived levels halve y and x until both are at most this, like a built pyramid's default ``--min-size``.
MIN_SIZE = 256

_hinted: set[str] = set()


class NoPyramidWarning(HiresWarning):
    """A large image has no stored pyramid: zooming out in napari reads all of it."""


def with_overview(pyramid: Pyramid) -> Pyramid:
    """The pyramid with lazy coarser levels if it is one level larger than OVERVIEW_ABOVE (hinting once), else as is."""
    if len(pyramid.levels) > 1 or max(pyramid.yx_shape) <= OVERVIEW_ABOVE:
        return pyramid
    _hint(pyramid)
    kernel = downsample_mode if pyramid.kind == "labels" else downsample_mean
    levels = [pyramid.levels[0]]
    while max(_yx(levels[-1], pyramid.axes)) > MIN_SIZE:
        levels.append(_halve(levels[-1], pyramid.axes, kernel))
    return pyramid.with_levels(levels)


def _yx(level: da.Array, axes: str) -> tuple[int, int]:
    return level.shape[axes.index("y")], level.shape[axes.index("x")]


def _halve(level: da.Array, axes: str, kernel: Callable[..., np.ndarray]) -> da.Array:
    """Level halved in y and x by ``kernel``, one task per chunk, rechunked back to the chunk size of ``level``."""
    spatial = [axes.index("y"), axes.index("x")]
    even = {i: level.chunks[i][0] + level.chunks[i][0] % 2 for i in spatial}
    if any(c % 2 for i in spatial for c in level.chunks[i][:-1]):  # windows must not straddle chunks
        level = level.rechunk(even)
    out_chunks = tuple(
        tuple(-(-c // 2) for c in dim) if i in spatial else dim for i, dim in enumerate(level.chunks)
    )
    half = level.map_blocks(kernel, factor=2, axes=axes, chunks=out_chunks, dtype=level.dtype)
    return half.rechunk({i: min(even[i], half.shape[i]) for i in spatial})


def _hint(pyramid: Pyramid) -> None:
    """Warn once per source that the image has no pyramid, and how to build one (napari shows it as a notification)."""
    source = pyramid.source or pyramid.name
    if source in _hinted:
        return
    _hinted.add(source)
    h, w = pyramid.yx_shape
    warnings.warn(
        f"{source} has no pyramid; zooming out reads the whole image ({h} x {w} pixels) — build one with "
        f"`napari-hires pyramid {source} OUT.zarr` (Plugins > napari-hires > Build pyramid) and open that",
        NoPyramidWarning,
        stacklevel=3,
    )
