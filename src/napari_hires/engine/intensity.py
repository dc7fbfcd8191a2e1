"""The numbers going into and out of a model: which raw values an image's 0..1 is, and pixels that are missing.

**Bit depth.** A model card normalises values on a 0..1 scale, ``(v - mean) / std``; its ``scale`` says which raw
values the model was trained on (1/255: 8-bit images). Every image is put on that 0..1 scale by its *own* range,
never by the card's, and restored pixels go back through the same range to the input's dtype:

- integer images by their dtype's range: uint8 0..255, uint16 0..65535, int16 -32768..32767 (so a 12-bit image
  stored as uint16 comes out dark: stretch it to the uint16 range, or convert it to 8 bits, first);
- float images by 0..1 when the finite values of the coarsest level lie within it (scikit-image's convention); else
  by the image's contrast limits per channel (an OME-Zarr's omero windows; without them the readers' 0.1-99.9
  percentiles of the coarsest level); else by those percentiles taken here (of a central window of at most
  ``SAMPLE`` pixels a side). A float image with no finite value, or with no contrast there, is refused with how to
  convert it.

The range chosen is in the run record and in what a run reports (:meth:`InputRange.describe`).

**Missing pixels.** NaN and +-Inf in a float image are missing data. The model sees the normalisation mean there
(input 0: the same value in every tile, so tiling stays exact), and the output there is no-data: label 0 with
probabilities 0 (segmentation), 0 for restored pixels (not NaN, which the output pyramid's averaging would spread
to coarser levels), and all-zero class scores for a heatmap pixel whose stride cell is at least half missing. Other
pixels see the filled value only within the model's own reach (its halo, or the tile for attention models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_hires.errors import HiresError
from napari_hires.io.readers import central_window

#: Side of the central window of the coarsest level read for the statistics of a float image.
SAMPLE = 1024
#: Percentiles of the coarsest level that bound a float image without contrast limits, outside 0..1.
PERCENTILES = (0.1, 99.9)


@dataclass(frozen=True)
class InputRange:
    """Raw values ``low`` -> 0 and ``high`` -> 1 on the model's scale, per channel, and how they were chosen."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    how: str  # "dtype", "unit" (float in 0..1), "contrast limits" or "percentiles"
    dtype: str

    def fit(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) per model input channel, adapted as the pixels are: gray repeated, alpha dropped."""
        low, high = np.asarray(self.low, np.float64), np.asarray(self.high, np.float64)
        if len(low) == 1:
            return np.repeat(low, channels), np.repeat(high, channels)
        return low[:channels], high[:channels]

    def record(self) -> list:
        """JSON-able: [low, high] when every channel has the same range, else one [low, high] per channel."""
        pairs = [[float(lo), float(hi)] for lo, hi in zip(self.low, self.high)]
        return pairs[0] if all(p == pairs[0] for p in pairs) else pairs

    @property
    def plain(self) -> bool:
        """The 8-bit case every model card assumes: nothing worth saying."""
        return self.how == "dtype" and self.dtype == "uint8"

    def describe(self) -> str:
        """In words, e.g. "input uint16 scaled from 0..65535"."""
        spans = ", ".join(dict.fromkeys(f"{_num(lo)}..{_num(hi)}" for lo, hi in zip(self.low, self.high)))
        if self.how == "dtype":
            return f"input {self.dtype} scaled from {spans}"
        if self.how == "unit":
            return "float input scaled from 0..1"
        if self.how == "contrast limits":
            return "float input scaled from contrast limits " + ", ".join(
                dict.fromkeys(f"{_float(lo)}..{_float(hi)}" for lo, hi in zip(self.low, self.high)))
        return (f"float input scaled from its {PERCENTILES[0]}-{PERCENTILES[1]} percentiles {spans} "
                "(coarsest level)")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.6g}"


def _float(v: float) -> str:
    """A float in at most 6 significant digits, always with a point: 0.0, 4000.0, 627.451."""
    text = f"{v:.6g}"
    return text if "." in text or "e" in text else text + ".0"


def dtype_range(dtype: Any, channels: int = 1) -> InputRange:
    """The range an image of ``dtype`` gets without statistics: its integer range, or 0..1 for floats and bools."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return InputRange((float(info.min),), (float(info.max),), "dtype", dtype.name)
    return InputRange((0.0,), (1.0,), "unit", dtype.name)


def image_range(dtype: Any, channels: int, coarsest: Any, axes: str,
                contrast_limits: list[tuple[float, float]] | None, name: str) -> InputRange:
    """The input range of an image (see the module docstring): ``coarsest`` is its coarsest level (a lazy array
    with ``axes``), read only for float images."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        return dtype_range(dtype, channels)
    sample = _sample(coarsest, axes)
    finite = np.isfinite(sample)
    if not finite.any():
        raise HiresError(f"{name} has no finite pixel values (all NaN or Inf) where its range is sampled; nothing "
                         "to scale it by. Fill or crop the missing data, or convert the image to 8 or 16 bits")
    values = sample[finite]
    if values.min() >= 0.0 and values.max() <= 1.0:
        return InputRange((0.0,), (1.0,), "unit", dtype.name)
    if contrast_limits and len(contrast_limits) in (1, channels) and all(hi > lo for lo, hi in contrast_limits):
        return InputRange(tuple(float(lo) for lo, _ in contrast_limits),
                          tuple(float(hi) for _, hi in contrast_limits), "contrast limits", dtype.name)
    low, high = [], []
    for c in range(sample.shape[-1]):
        channel = sample[..., c][finite[..., c]]
        lo, hi = np.percentile(channel, PERCENTILES) if channel.size else (0.0, 0.0)
        if not hi > lo:
            raise HiresError(f"{name} has no contrast in channel {c} (its values are about {float(lo):g}); nothing "
                             "to scale it by. Rescale it to 0..1, store contrast limits (omero windows) with it, or "
                             "convert it to 8 or 16 bits")
        low.append(float(lo))
        high.append(float(hi))
    return InputRange(tuple(low), tuple(high), "percentiles", dtype.name)


def _sample(level: Any, axes: str) -> np.ndarray:
    """A central window (at most ``SAMPLE`` px a side) of a level as float64 (y, x, c), middle plane of t and z."""
    window = central_window(level, axes, SAMPLE).astype(np.float64, copy=False)
    order = [axes.index(a) for a in "yx"] + ([axes.index("c")] if "c" in axes else [])
    rest = [i for i in range(len(axes)) if i not in order]
    window = np.transpose(window, order + rest)
    return window.reshape(window.shape[:2] + (-1,))


def missing_pixels(pixels: np.ndarray) -> np.ndarray | None:
    """(y, x) True where any channel of (y, x, c) ``pixels`` is NaN or Inf; None when none is (or cannot be)."""
    if pixels.dtype.kind != "f":
        return None
    missing = ~np.isfinite(pixels).all(axis=-1)
    return missing if missing.any() else None
