"""Read rectangles of a dask array by computing only the chunks they cover, at a cost that does not grow with it."""

from __future__ import annotations

import itertools

import dask.array as da
import numpy as np
from dask.local import get_sync
from dask.optimization import cull


class RegionReader:
    """Reads regions of a dask array by computing only the chunks they cover.

    Slicing a dask array and computing the slice culls the whole graph each time (cost grows with the image, so a
    block-by-block copy would be quadratic); here the graph is materialised once and each read culls from it.
    """

    def __init__(self, array: da.Array) -> None:
        self.name = array.name
        self.graph = dict(array.__dask_graph__())
        self.bounds = [np.cumsum((0, *c)) for c in array.chunks]

    def read(self, sel: tuple[slice, ...]) -> np.ndarray:
        ranges = [
            range(int(np.searchsorted(b, s.start, side="right")) - 1, int(np.searchsorted(b, s.stop, side="left")))
            for s, b in zip(sel, self.bounds)
        ]
        index = list(itertools.product(*ranges))
        keys = [(self.name, *i) for i in index]
        graph, _ = cull(self.graph, keys)
        grid = np.empty([len(r) for r in ranges], dtype=object)
        for i, value in zip(index, get_sync(graph, keys)):
            grid[tuple(j - r.start for j, r in zip(i, ranges))] = np.asarray(value)
        region = np.block(grid.tolist()) if grid.size > 1 else grid.flat[0]
        return region[tuple(slice(s.start - b[r.start], s.stop - b[r.start]) for s, b, r in zip(sel, self.bounds, ranges))]
