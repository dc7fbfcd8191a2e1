"""The engine's input: one 2-d plane of a pyramid level (or any array), read as (y, x, channels) regions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import dask.array as da
import numpy as np

from napari_hires.engine.intensity import InputRange, image_range
from napari_hires.engine.tiling import Box
from napari_hires.errors import HiresError
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.region_reader import RegionReader


@dataclass
class ImageSource:
    """Regions of one plane as (y, x, c) numpy arrays; ``scale``/``translation`` are (y, x) of that level."""

    array: Any
    axes: str
    name: str
    scale: tuple[float, float] = (1.0, 1.0)
    translation: tuple[float, float] = (0.0, 0.0)
    origin: str = ""  # where it came from (path and level), for run records and messages
    path: str | None = None  # the file or store it was read from, if any (to identify its content, protect it)
    contrast_limits: list[tuple[float, float]] | None = None  # the image's: part of a float image's input range
    coarsest: Any = None  # the image's coarsest level (same axes) for a float image's statistics; None: ``array``

    def __post_init__(self) -> None:
        for axis in self.axes:
            if axis not in "tczyx":
                raise HiresError(f"{self.name}: axis {axis!r} is not one of t, c, z, y, x")
            if axis in "tz" and self.array.shape[self.axes.index(axis)] != 1:
                raise HiresError(
                    f"{self.name} has {self.array.shape[self.axes.index(axis)]} planes along {axis}; the engine "
                    "predicts 2-d planes: select one (e.g. with napari's slider, or array[index]) first"
                )
        if "y" not in self.axes or "x" not in self.axes:
            raise HiresError(f"{self.name}: an image needs y and x axes, got {self.axes!r}")
        self._reader = RegionReader(self.array) if isinstance(self.array, da.Array) else None

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape[self.axes.index("y")], self.array.shape[self.axes.index("x")]

    @property
    def channels(self) -> int:
        return self.array.shape[self.axes.index("c")] if "c" in self.axes else 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @cached_property
    def input_range(self) -> InputRange:
        """Raw values that are the model's 0..1, the same for every level of one image (engine/intensity.py)."""
        coarsest = self.array if self.coarsest is None else self.coarsest
        return image_range(self.dtype, self.channels, coarsest, self.axes, self.contrast_limits, self.name)

    @property
    def bounds(self) -> Box:
        h, w = self.shape
        return Box(0, h, 0, w)

    def read(self, box: Box) -> np.ndarray:
        """Pixels of ``box`` as a (y, x, c) array."""
        sel = tuple(
            slice(box.y0, box.y1) if a == "y" else slice(box.x0, box.x1) if a == "x" else slice(0, n)
            for a, n in zip(self.axes, self.array.shape)
        )
        data = self._reader.read(sel) if self._reader is not None else np.asarray(self.array[sel])
        order = [self.axes.index(a) for a in "yx"] + ([self.axes.index("c")] if "c" in self.axes else [])
        rest = [i for i in range(len(self.axes)) if i not in order]
        data = np.transpose(data, order + rest).reshape(box.shape + (self.channels,))
        return data


def opened(image: Pyramid | Any) -> Pyramid | Any:
    """A path opened as a Pyramid (with ``open_image``); anything else as it is."""
    if isinstance(image, (str, os.PathLike)):
        from napari_hires.io.readers import open_image

        return open_image(os.path.abspath(image))  # absolute: the run record must not depend on the cwd
    return image


def as_source(image: Pyramid | Any, level: int = 0) -> ImageSource:
    """An :class:`ImageSource` from a Pyramid level, a path (opened with ``open_image``), or a 2-d/3-d array."""
    image = opened(image)
    if isinstance(image, Pyramid):
        if not 0 <= level < len(image.levels):
            raise HiresError(f"{image.name} has levels 0 to {len(image.levels) - 1}; level {level} does not exist")
        iy, ix = image.axes.index("y"), image.axes.index("x")
        fy, fx = image.downsample_factors()[level]
        return ImageSource(
            image.levels[level], image.axes, image.name,
            scale=(image.scale[iy] * fy, image.scale[ix] * fx),
            translation=(image.translation[iy], image.translation[ix]),
            origin=f"{image.source or image.name} level {level}", path=image.source,
            contrast_limits=image.contrast_limits, coarsest=image.levels[-1],
        )
    shape = getattr(image, "shape", None)
    if shape is None or len(shape) not in (2, 3):
        raise HiresError("the engine takes a Pyramid, a path, or a 2-d (y, x) / 3-d (y, x, c) array")
    if level:
        raise HiresError("a plain array has one level; pass level=0 or a Pyramid")
    axes = "yx" if len(shape) == 2 else ("yxc" if shape[-1] <= 4 else "cyx")
    return ImageSource(image, axes, getattr(image, "name", "array"), origin=f"array {tuple(shape)}")
