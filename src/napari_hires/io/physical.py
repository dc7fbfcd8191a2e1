"""Physical pixel size: what one pixel of an image level measures (micrometres, or metres for remote sensing).

Readers record it as a Pyramid's level-0 ``scale`` with length ``units`` (OME-Zarr axes units and scale transforms,
OME-TIFF PhysicalSize, SVS MPP, TIFF resolution tags), or as ``nominal_pixel_size`` where the scale stays in pixels
(the synthetic slide). Model cards record the same quantity for their training images (ModelCard.pixel_size).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from napari_hires.io.pyramid import Pyramid

#: Metres per unit, for the OME-NGFF length unit names and the symbols files also use.
METERS_PER = {
    "angstrom": 1e-10, "nanometer": 1e-9, "nm": 1e-9, "micrometer": 1e-6, "µm": 1e-6, "μm": 1e-6, "um": 1e-6,
    "micron": 1e-6, "millimeter": 1e-3, "mm": 1e-3, "centimeter": 1e-2, "cm": 1e-2, "meter": 1.0, "m": 1.0,
    "kilometer": 1e3, "km": 1e3, "inch": 0.0254, "foot": 0.3048,
}
#: Sizes up to this many metres are given in micrometres, larger ones in metres (the two units of model cards).
_MICRO_UP_TO = 1e-3


class PixelSize(NamedTuple):
    """The side of one pixel: ``value`` in ``unit``, "micrometer" or "meter" (OME-NGFF names)."""

    value: float
    unit: str

    @classmethod
    def of(cls, value: float, unit: str) -> PixelSize | None:
        """A size in any known length unit, in micrometres (up to a millimetre) or metres; None for other units."""
        meters = METERS_PER.get(unit)
        if meters is None or not math.isfinite(value) or value <= 0:
            return None
        size = value * meters
        return cls(size * 1e6, "micrometer") if size <= _MICRO_UP_TO else cls(size, "meter")

    @property
    def meters(self) -> float:
        return self.value * METERS_PER[self.unit]

    def ratio(self, other: PixelSize) -> float:
        """How many times larger this pixel is than ``other`` (1.0: the same size)."""
        return self.meters / other.meters

    def describe(self) -> str:
        """'0.50 um/px', '10 m/px'."""
        symbol = "um" if self.unit == "micrometer" else "m"
        return f"{self.value:.2f} {symbol}/px" if 0.1 <= self.value < 10 else f"{self.value:.3g} {symbol}/px"


def pixel_size(image: Pyramid, level: int = 0) -> PixelSize | None:
    """The pixel size of ``level`` of ``image`` (level 0's times the level's downsampling), or None when the image
    has no physical scale (y/x scale without length units, and no nominal size). Unequal y and x sizes give their
    geometric mean."""
    iy, ix = image.axes.index("y"), image.axes.index("x")
    sides = [PixelSize.of(image.scale[i], image.units.get(a, "")) for a, i in (("y", iy), ("x", ix))]
    if None not in sides:
        base = math.sqrt(sides[0].meters * sides[1].meters)
    elif image.nominal_pixel_size is not None:
        base = image.nominal_pixel_size.meters
    else:
        return None
    fy, fx = image.downsample_factors()[level]
    return PixelSize.of(base * math.sqrt(fy * fx), "meter")
