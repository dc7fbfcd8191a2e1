"""Recompute the part of every coarser level that a changed level-0 region covers (edits, live predictions)."""

from __future__ import annotations

import math
from typing import Sequence

import zarr

from napari_hires.io.downsample import downsample_mean, downsample_mode


def update_levels(levels: Sequence[zarr.Array], y0: int, y1: int, x0: int, x1: int, *, axes: str,
                  labels: bool) -> list[tuple[int, int, int, int]]:
    """After level 0 changed in [y0, y1) x [x0, x1), rewrite the covering region of levels 1, 2, ...

    Each level is recomputed from the level above (mode for labels, mean for images), over the region widened to
    whole 2 x 2 cells, so the result equals building the pyramid from scratch. Returns the rewritten box per level.
    """
    kernel = downsample_mode if labels else downsample_mean
    iy, ix = axes.index("y"), axes.index("x")
    boxes = []
    for above, level in zip(levels[:-1], levels[1:]):
        y0, x0 = y0 // 2, x0 // 2
        y1, x1 = min(math.ceil(y1 / 2), level.shape[iy]), min(math.ceil(x1 / 2), level.shape[ix])
        src = [slice(None)] * len(axes)
        src[iy] = slice(2 * y0, min(2 * y1, above.shape[iy]))
        src[ix] = slice(2 * x0, min(2 * x1, above.shape[ix]))
        dst = [slice(None)] * len(axes)
        dst[iy], dst[ix] = slice(y0, y1), slice(x0, x1)
        level[tuple(dst)] = kernel(above[tuple(src)], 2, axes)
        boxes.append((y0, y1, x0, x1))
    return boxes
