"""Label images as GeoJSON polygons in QuPath's format, traced block by block and merged across block borders.

Each block of level 0 is traced with :func:`rasterio.features.shapes` (4-connected regions of one value, vertices on
pixel edges, holes kept). A polygon that does not touch an inner block border is a whole object and is written at
once; the pieces that do are kept and, per label value, merged with :func:`shapely.union_all` at the end, then
split back into one polygon per connected object. Memory is one block plus the border pieces, whatever the image.
Coordinates are level-0 pixels with the origin at the top-left corner and y down (QuPath's convention).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Callable, Iterator, TextIO

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry import Polygon, shape

from napari_hires.io.region_reader import RegionReader

#: dtypes rasterio traces as they are; other integer labels are renumbered per block.
_TRACEABLE = {np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.int32)}
_INT32 = np.iinfo(np.int32)


def block_boxes(height: int, width: int, block: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of the blocks covering a height x width image, row by row."""
    return [(y, min(y + block, height), x, min(x + block, width))
            for y in range(0, height, block) for x in range(0, width, block)]


def trace_block(values: np.ndarray, y0: int = 0, x0: int = 0) -> Iterator[tuple[int, Polygon]]:
    """(label value, polygon) of every 4-connected region of one non-zero value, in image pixels from (y0, x0)."""
    values = np.asarray(values)
    if not values.any():
        return
    lookup = None
    if values.dtype in _TRACEABLE:
        data = values
    elif _INT32.min <= values.min() and values.max() <= _INT32.max:
        data = values.astype(np.int32)
    else:  # ids beyond int32 (e.g. uint64): trace per-block indices, map them back
        lookup, inverse = np.unique(values, return_inverse=True)
        data = inverse.reshape(values.shape).astype(np.int32)
    for geom, value in rasterio.features.shapes(data, mask=values != 0, connectivity=4,
                                                transform=Affine.translation(x0, y0)):
        label = int(value) if lookup is None else int(lookup[int(value)])
        yield label, shape(geom)


class PolygonMerger:
    """Collects traced blocks: whole polygons come straight back, pieces on inner block borders wait for the merge."""

    def __init__(self, height: int, width: int) -> None:
        self.height = height
        self.width = width
        self.pending: dict[int, list[Polygon]] = defaultdict(list)

    def add_block(self, values: np.ndarray, y0: int, x0: int) -> list[tuple[int, Polygon]]:
        """Trace one block; returns the polygons already whole, keeps those that may continue in a neighbour."""
        y1, x1 = y0 + values.shape[0], x0 + values.shape[1]
        whole = []
        for label, polygon in trace_block(values, y0, x0):
            minx, miny, maxx, maxy = polygon.bounds
            on_border = ((minx == x0 and x0 > 0) or (miny == y0 and y0 > 0)
                         or (maxx == x1 and x1 < self.width) or (maxy == y1 and y1 < self.height))
            if on_border:
                self.pending[label].append(polygon)
            else:
                whole.append((label, polygon))
        return whole

    def finish(self) -> Iterator[tuple[int, Polygon]]:
        """Merge the border pieces of each label value and yield one polygon per connected object."""
        for label in sorted(self.pending):
            merged = shapely.union_all(self.pending.pop(label))
            for part in shapely.get_parts(merged):
                if isinstance(part, Polygon) and not part.is_empty:
                    yield label, shapely.simplify(part, 0)  # drops the vertices left on former block borders


def qupath_feature(polygon: Polygon, class_name: str, color: tuple[int, int, int] | None) -> dict[str, Any]:
    """A QuPath annotation Feature: the polygon (integer pixel coordinates) and its classification."""
    classification: dict[str, Any] = {"name": class_name}
    if color is not None:
        classification["color"] = [int(c) for c in color]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [_ring(polygon.exterior.coords)]
                     + [_ring(ring.coords) for ring in polygon.interiors]},
        "properties": {"objectType": "annotation", "classification": classification},
    }


def _ring(coords: Any) -> list[list[int]]:
    """Ring coordinates as integers: traced vertices lie on pixel edges, so rounding loses nothing."""
    return np.rint(np.asarray(coords)).astype(np.int64).tolist()


def write_geojson(
    level0: Any,
    fh: TextIO,
    *,
    class_names: dict[int, str],
    class_colors: dict[int, tuple[int, int, int]],
    block: int = 4096,
    tick: Callable[[], None] = lambda: None,
) -> int:
    """Trace a 2-d dask label array block by block into a FeatureCollection on fh; returns the number of features.

    Label 0 is background and never traced; other values without a class name are named by their value.
    """
    height, width = level0.shape
    reader = RegionReader(level0)
    merger = PolygonMerger(height, width)
    count = 0
    fh.write('{"type": "FeatureCollection", "features": [')

    def emit(polygons: Any) -> None:
        nonlocal count
        for label, polygon in polygons:
            feature = qupath_feature(polygon, class_names.get(label, str(label)), class_colors.get(label))
            fh.write(("\n" if count == 0 else ",\n") + json.dumps(feature, separators=(",", ":")))
            count += 1

    for y0, y1, x0, x1 in block_boxes(height, width, block):
        emit(merger.add_block(reader.read((slice(y0, y1), slice(x0, x1))), y0, x0))
        tick()
    emit(merger.finish())
    fh.write("\n]}\n")
    return count
