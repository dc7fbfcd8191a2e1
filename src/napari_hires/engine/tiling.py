"""Where tiles go and how much each one counts: the geometry of seam-free tiled inference.

A block of output is predicted from tiles laid over the block plus a ``margin`` of context on every side that is not
an image edge. Along each tile edge that is not an image edge the tile's output is distrusted for ``margin`` pixels
(weight ~0: the model saw padding there, not the image) and then faded in over ``blend`` pixels (a half-Hann ramp).
Neighbouring tiles overlap by at least ``2 * margin + blend``, so every pixel has a tile that saw its full context,
and where two such tiles meet they cross-fade. For a convolutional model whose receptive radius is at most
``margin`` the result equals whole-image inference; for attention models the cross-fade hides what differs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from napari_hires.errors import HiresError
from napari_hires.geometry import Box

#: Weight of distrusted pixels: not zero, so that a pixel every tile distrusts still gets a (blended) value.
FLOOR = 1e-6
#: Narrowest cross-fade used when the overlap leaves room for one.
MIN_BLEND = 8


#: How much longer than asked a tile may grow to cover a region with fewer tiles (models that tile exactly only).
STRETCH = 1.25


@dataclass(frozen=True)
class TileLayout:
    """Tile size, and how tiles overlap: ``overlap = 2 * margin + blend`` pixels between neighbours.

    ``max_tile`` > ``tile`` lets tiles grow (in steps of ``multiple``) where that covers a region with fewer tile
    pixels: a 2048 px block takes 4 tiles of 576 instead of 5 of 512. Only for models whose output does not depend
    on the tile (a halo covering the receptive field), so the result is the same, for less work.
    """

    tile: int
    margin: int
    blend: int
    max_tile: int = 0  # 0 or anything below ``tile``: tiles keep their size
    multiple: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_tile", max(self.max_tile, self.tile))

    @property
    def overlap(self) -> int:
        return 2 * self.margin + self.blend

    def axis(self, start: int, stop: int) -> tuple[int, list[int]]:
        """(tile length, tile origins) covering [start, stop) along one axis with the fewest tile pixels."""
        best = (self.tile, tile_starts(start, stop, self.tile, self.overlap))
        for t in range(self.tile + self.multiple, self.max_tile + 1, self.multiple):
            if t > stop - start:
                break
            starts = tile_starts(start, stop, t, self.overlap)
            if len(starts) * t < len(best[1]) * best[0]:
                best = (t, starts)
        return best

    @classmethod
    def for_model(cls, tile: int, halo: int, overlap: int | None = None, multiple: int = 1,
                  receptive_field: int = 0, stretch: bool = False) -> "TileLayout":
        """Layout for a model with ``halo`` (its trusted context) and input ``multiple``; ``overlap`` overrides.

        The default overlap is ``2 * halo``, plus a cross-fade only where the model sees beyond its halo (attention):
        when the halo covers the receptive field, cropping is already exact and a cross-fade would only cost tiles.
        The cross-fade is at least a sixteenth of the tile: neighbouring tiles of an attention model disagree a
        little everywhere (they saw different context), and a wide fade hides that where a wide halo would not.
        With ``stretch``, tiles of a model that tiles exactly may grow by up to a quarter to fit a region.
        """
        if tile < 1:
            raise HiresError(f"tile must be positive, got {tile}")
        asked, tile = tile, math.ceil(tile / multiple) * multiple
        exact = receptive_field <= 2 * halo + 1
        given = overlap is not None
        if overlap is None:
            overlap = 2 * halo + (0 if exact else max(MIN_BLEND, halo // 2, tile // 16))
        if not 0 <= overlap < tile:
            size = f"{tile} px" + (f", {asked} rounded up to a multiple of {multiple}" if asked != tile else "")
            if given:
                raise HiresError(f"overlap {overlap} px must be smaller than the tile ({size}) and not negative, so "
                                 "that neighbouring tiles advance; choose a smaller overlap or a larger tile")
            fade = "" if exact else " plus a cross-fade"
            raise HiresError(f"the model's overlap of {overlap} px (twice its halo of {halo} px{fade}) does not fit in "
                             f"a tile of {size}; choose a larger tile")
        margin = min(halo, overlap // 2)  # the rest of the overlap is cross-faded
        grow = stretch and exact and overlap == 2 * halo
        max_tile = math.ceil(tile * STRETCH / multiple) * multiple if grow else tile
        return cls(tile=tile, margin=margin, blend=overlap - 2 * margin, max_tile=max_tile, multiple=multiple)


def layout_for(net, tile: int | None = None, overlap: int | None = None) -> TileLayout:
    """The layout a model asks for (its tile size, halo, input multiple and receptive field), with overrides.

    Tiles may stretch (see :class:`TileLayout`) only for dense models tiled at their own tile size and overlap.
    """
    stretch = tile is None and overlap is None and net.task != "classification"
    return TileLayout.for_model(tile or net.tile_size, net.halo, overlap, net.input_multiple, net.receptive_field,
                                stretch=stretch)


def block_side(chunk: int, layout: TileLayout, max_tiles: int = 8) -> int:
    """Output block side (whole chunks, 2 to ``max_tiles`` tiles) that wastes the least tile area.

    A block is predicted from tiles over the block plus its margins; their count is rounded up, so some sizes fit
    the tiles far better than others. Larger blocks hold more memory, so ties go to the smaller one.
    """
    best, best_cost = chunk, float("inf")
    lo = max(chunk, math.ceil(2 * layout.tile / chunk) * chunk)
    for side in range(lo, max(lo, max_tiles * layout.tile) + 1, chunk):
        length, starts = layout.axis(0, side + 2 * layout.margin)
        cost = len(starts) * length / side
        if cost < best_cost - 1e-9:
            best, best_cost = side, cost
    return best


def output_grid(layout: TileLayout, task: str, chunk: int, block: int | None = None) -> tuple[int, int, int]:
    """(output chunk, output block, input pixels per output pixel) of a run.

    Dense outputs share the input's grid. A classification heatmap has one pixel per tile stride, so its chunks
    hold a few tiles a side: a block then reads about as many input pixels as a dense block does.
    """
    if task == "classification":
        stride = layout.tile - layout.overlap
        chunk = min(chunk, max(1, round(4 * layout.tile / stride)))
        return chunk, block or chunk, stride
    return chunk, block or block_side(chunk, layout), 1


def tile_starts(start: int, stop: int, tile: int, overlap: int) -> list[int]:
    """Tile origins covering [start, stop) with tiles of ``tile`` pixels overlapping by at least ``overlap``.

    Tiles never extend past ``stop``; spacing is made even so that no pair overlaps much more than the others.
    """
    length = stop - start
    if length <= tile:
        return [start]
    stride = tile - overlap
    count = math.ceil((length - tile) / stride) + 1
    return [int(round(v)) for v in np.linspace(start, stop - tile, count)]


def edge_weights(length: int, margin: int, blend: int, taper_start: bool, taper_stop: bool) -> np.ndarray:
    """1-d weights of one tile: ~0 for ``margin`` pixels, a half-Hann ramp over ``blend``, 1 inside.

    Only edges that are not image edges taper (``taper_start`` / ``taper_stop``): at an image edge the tile saw
    exactly what a whole-image run sees.
    """
    d = np.arange(length, dtype=np.float64)
    w = np.ones(length)
    for taper, dist in ((taper_start, d), (taper_stop, length - 1 - d)):
        if not taper:
            continue
        ramp = np.clip((dist - margin + 0.5) / max(blend, 1), 0.0, 1.0) if blend else (dist >= margin).astype(float)
        w = np.minimum(w, 0.5 - 0.5 * np.cos(np.pi * ramp))
    return np.maximum(w, FLOOR).astype(np.float32)


def context_box(target: Box, image: Box, layout: TileLayout) -> Box:
    """The input region read for ``target``: its margin of context, widened to a whole tile where the image allows."""
    box = target.grow(layout.margin, image)
    y0, y1, x0, x1 = box.y0, box.y1, box.x0, box.x1
    if y1 - y0 < layout.tile:  # a narrow block at the image end: take more context rather than pad the tile
        y0 = max(image.y0, y1 - layout.tile)
        y1 = min(image.y1, y0 + layout.tile)
    if x1 - x0 < layout.tile:
        x0 = max(image.x0, x1 - layout.tile)
        x1 = min(image.x1, x0 + layout.tile)
    return Box(y0, y1, x0, x1)


@lru_cache(maxsize=64)
def tile_weights(shape: tuple[int, int], margin: int, blend: int, tapers: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """2-d blend weights of a tile of ``shape`` whose (top, bottom, left, right) edges taper where ``tapers`` says."""
    wy = edge_weights(shape[0], margin, blend, tapers[0], tapers[1])
    wx = edge_weights(shape[1], margin, blend, tapers[2], tapers[3])
    weights = np.outer(wy, wx)
    weights.flags.writeable = False  # shared by every tile of the same kind
    return weights


def tiles_for(region: Box, image: Box, layout: TileLayout) -> list[tuple[Box, tuple]]:
    """Tiles (in level coordinates) covering ``region``, each with the key of its weights (see :func:`tile_weights`)."""
    out = []
    th, ys = layout.axis(region.y0, region.y1)
    tw, xs = layout.axis(region.x0, region.x1)
    for y in ys:
        for x in xs:
            box = Box(y, min(y + th, region.y1), x, min(x + tw, region.x1))
            tapers = (box.y0 > image.y0, box.y1 < image.y1, box.x0 > image.x0, box.x1 < image.x1)
            out.append((box, (box.shape, layout.margin, layout.blend, tapers)))
    return out
