"""Which pyramid level a model runs on: the one whose pixel size matches the pixel size its card was trained at.

A model learns structures of a size in pixels; on an image scanned at another resolution they have another size, and
the output suffers without an error. So a run left to choose (``level=None``) takes the level nearest the card's
pixel size (in log scale), and any run whose level is more than :data:`TOLERANCE` off warns, naming both sizes and
what to do. With no pixel size on either side, the run is level 0 (or the level asked), as before, and says nothing.
The image is not resampled: without a matching level the run goes on the nearest one, with the warning.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

from napari_hires.errors import LevelChosenWarning, ResolutionMismatchWarning
from napari_hires.io.physical import PixelSize, pixel_size
from napari_hires.io.pyramid import Pyramid

#: A level matches the model when its pixel size is within this fraction of the card's (either way).
TOLERANCE = 0.25


@dataclass(frozen=True)
class LevelChoice:
    """The level to run on and what was said about it (``note``: empty when no pixel size is known)."""

    level: int
    note: str = ""
    image: PixelSize | None = None  # the level's pixel size
    model: PixelSize | None = None  # the card's
    mismatch: str = ""  # the warning when the level is more than TOLERANCE off the card's size; empty if not


def trained_pixel_size(card: Any) -> PixelSize | None:
    """The pixel size a model card records for its training images, or None."""
    size = getattr(card, "pixel_size", None)
    return PixelSize.of(size, card.pixel_unit) if size is not None else None


def choose_level(image: Any, card: Any, level: int | None, *, warn: bool = True) -> LevelChoice:
    """The level of ``image`` (a Pyramid; anything else has one level) to run a model with ``card`` on: ``level``
    if given, else the one whose pixel size is nearest the card's. ``warn``: a level off by more than TOLERANCE
    warns (:class:`ResolutionMismatchWarning`), and so does a chosen level other than 0 (:class:`LevelChosenWarning`),
    so that a run never changes resolution unannounced."""
    trained = trained_pixel_size(card)
    sizes = [pixel_size(image, k) for k in range(len(image.levels))] if isinstance(image, Pyramid) else []
    if trained is None or not sizes or sizes[0] is None or (level is not None and not 0 <= level < len(sizes)):
        return LevelChoice(level or 0, model=trained)
    chosen = level if level is not None else _nearest(sizes, trained)
    size = sizes[chosen]
    note = f"model trained at {trained.describe()}; running on level {chosen} ({size.describe()}) of the image"
    off = max(size.ratio(trained), trained.ratio(size))
    mismatch = _mismatch(image.name, trained, sizes, chosen, level is None) if off - 1 > TOLERANCE else ""
    if warn and mismatch:
        warnings.warn(mismatch, ResolutionMismatchWarning, stacklevel=3)
    elif warn and level is None and chosen:
        warnings.warn(f"{note} (pass level=0 for full resolution)", LevelChosenWarning, stacklevel=3)
    return LevelChoice(chosen, note, size, trained, mismatch)


def _nearest(sizes: list[PixelSize], trained: PixelSize) -> int:
    """The level whose pixel size is nearest ``trained`` in log scale (the finer of two equally near)."""
    return min(range(len(sizes)), key=lambda k: abs(math.log(sizes[k].ratio(trained))))


def _mismatch(name: str, trained: PixelSize, sizes: list[PixelSize], chosen: int, automatic: bool) -> str:
    """The warning for running at a pixel size more than TOLERANCE off the model's: both sizes, and what to do."""
    size = sizes[chosen]
    how = "finer" if size.meters < trained.meters else "coarser"
    factor = max(size.ratio(trained), trained.ratio(size))
    levels = ", ".join(f"level {k} {s.describe()}" for k, s in enumerate(sizes))
    if automatic:
        return (f"model trained at {trained.describe()}, but no level of {name} is within {TOLERANCE:.0%} of it "
                f"({levels}); running on the nearest, level {chosen}, {factor:.2g}x {how}. Resample the image to "
                f"{trained.describe()}, or use a model trained at the image's resolution")
    best = _nearest(sizes, trained)
    fix = (f"leave the level automatic (level {best}, {sizes[best].describe()}), or resample the image"
           if best != chosen else f"resample the image to {trained.describe()}")
    return (f"model trained at {trained.describe()}, but level {chosen} of {name} is {size.describe()}, "
            f"{factor:.2g}x {how}: its output may be poor. To match, {fix}")


def region_at(region: tuple[int, int, int, int] | None, image: Any, level: int) -> tuple[int, int, int, int] | None:
    """A level-0 pixel ``region`` (y0, y1, x0, x1) in pixels of ``level`` of ``image``, covering it (clipped)."""
    if region is None or level == 0:
        return region
    fy, fx = image.downsample_factors()[level]
    h, w = image.level_yx_shape(level)
    y0, y1, x0, x1 = region
    return (int(y0 // fy), min(h, math.ceil(y1 / fy)), int(x0 // fx), min(w, math.ceil(x1 / fx)))
