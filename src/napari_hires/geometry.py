"""Rectangles in pixels of one pyramid level: shared by the engine, the label store and the widgets (no torch)."""

from __future__ import annotations

from typing import NamedTuple


class Box(NamedTuple):
    """A rectangle [y0, y1) x [x0, x1) in pixels; unpacks as ``y0, y1, x0, x1``."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def index(self, axes: str, rest: slice = slice(None)) -> tuple[slice, ...]:
        """An index of an array with ``axes`` (e.g. "cyx"): this box in y and x, ``rest`` along every other axis."""
        return tuple(slice(self.y0, self.y1) if a == "y" else slice(self.x0, self.x1) if a == "x" else rest
                     for a in axes)

    def intersect(self, other: "Box") -> "Box | None":
        y0, y1, x0, x1 = max(self.y0, other.y0), min(self.y1, other.y1), max(self.x0, other.x0), min(self.x1, other.x1)
        return Box(y0, y1, x0, x1) if y0 < y1 and x0 < x1 else None

    def grow(self, by: int, bounds: "Box") -> "Box":
        """This box widened by ``by`` on every side, clipped to ``bounds``."""
        return Box(max(bounds.y0, self.y0 - by), min(bounds.y1, self.y1 + by),
                   max(bounds.x0, self.x0 - by), min(bounds.x1, self.x1 + by))

    def __str__(self) -> str:
        return f"y {self.y0}:{self.y1}, x {self.x0}:{self.x1}"
