"""The Pyramid: one image (or label image) as lazy dask levels plus what napari needs to show it.

Every reader in :mod:`napari_hires.io` returns this, and every consumer (napari layers, the engine,
the pyramid builder) reads from it, so file formats never leak past ``io``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Sequence

import dask.array as da
import numpy as np

from napari_hires.io.physical import PixelSize

LayerKind = Literal["image", "labels"]

#: Axis letters as in OME-NGFF: time, channel, z, y, x. TIFF RGB samples are "c" last.
SPATIAL_AXES = ("z", "y", "x")


def is_rgb(kind: str, axes: str, shape: Sequence[int], dtype: Any) -> bool:
    """True for uint8 images whose last axis is 3 or 4 colour samples (napari's rgb mode)."""
    return kind == "image" and axes.endswith("c") and shape[-1] in (3, 4) and np.dtype(dtype) == np.uint8


@dataclass(frozen=True)
class Pyramid:
    """A multiscale image: ``levels[0]`` is full resolution, each next level coarser in y and x.

    ``scale`` and ``translation`` are per axis of ``axes`` for level 0 (physical units, e.g. µm);
    coarser levels inherit them and napari infers their downsampling from the shapes. ``nominal_pixel_size`` is the
    physical size of a level-0 pixel where ``scale`` stays in pixels (the synthetic slide); see io/physical.py.
    """

    levels: list[da.Array]
    axes: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    name: str = "image"
    kind: LayerKind = "image"
    channel_names: list[str] | None = None
    contrast_limits: list[tuple[float, float]] | None = None
    units: dict[str, str] = field(default_factory=dict)
    #: Label value -> class name, and label value -> RGBA in 0..1 (labels only).
    class_names: dict[int, str] = field(default_factory=dict)
    class_colors: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)
    source: str | None = None
    nominal_pixel_size: PixelSize | None = None

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("a Pyramid needs at least one level")
        ndim = self.levels[0].ndim
        if len(self.axes) != ndim:
            raise ValueError(f"axes {self.axes!r} do not match the {ndim}-d level 0 of shape {self.levels[0].shape}")
        if len(self.scale) != ndim or len(self.translation) != ndim:
            raise ValueError(f"scale and translation need {ndim} values, got {self.scale} and {self.translation}")
        if any(lv.ndim != ndim for lv in self.levels):
            raise ValueError("all levels of a Pyramid must have the same number of dimensions")
        if "y" not in self.axes or "x" not in self.axes:
            raise ValueError(f"a Pyramid needs y and x axes, got {self.axes!r}")

    # ------------------------------------------------------------------ shape helpers
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.levels[0].shape)

    @property
    def dtype(self) -> np.dtype:
        return self.levels[0].dtype

    @property
    def yx_shape(self) -> tuple[int, int]:
        """Height and width of level 0 in pixels."""
        return self.level_yx_shape(0)

    def level_yx_shape(self, level: int) -> tuple[int, int]:
        shape = self.levels[level].shape
        return shape[self.axes.index("y")], shape[self.axes.index("x")]

    def downsample_factors(self) -> list[tuple[float, float]]:
        """(y, x) factor of each level relative to level 0."""
        h0, w0 = self.yx_shape
        return [(h0 / h, w0 / w) for h, w in (self.level_yx_shape(i) for i in range(len(self.levels)))]

    @property
    def rgb(self) -> bool:
        """True for uint8 images whose last axis is 3 or 4 colour samples (napari's rgb mode)."""
        return is_rgb(self.kind, self.axes, self.shape, self.dtype)

    @property
    def channel_axis(self) -> int | None:
        """Index of a channel axis napari should split into layers (never for RGB)."""
        if self.kind != "image" or self.rgb or "c" not in self.axes:
            return None
        return self.axes.index("c") if self.shape[self.axes.index("c")] > 1 else None

    def with_levels(self, levels: Sequence[da.Array]) -> "Pyramid":
        return replace(self, levels=list(levels))

    # ------------------------------------------------------------------ napari
    def layer_data(self) -> list[tuple[Any, dict[str, Any], str]]:
        """napari ``LayerDataTuple`` list: one Image (channels split) or one Labels layer."""
        data: Any = self.levels if len(self.levels) > 1 else self.levels[0]
        multiscale = len(self.levels) > 1
        if self.rgb:
            spatial = slice(0, -1)
        else:
            spatial = slice(None)
        scale = list(self.scale[spatial])
        translate = list(self.translation[spatial])
        meta: dict[str, Any] = {"name": self.name, "multiscale": multiscale, "metadata": {"source": self.source}}

        if self.kind == "labels":
            keep = [i for i, a in enumerate(self.axes) if a != "c"]
            if "c" in self.axes:
                raise ValueError(f"label image {self.name!r} has a channel axis; labels must be single-channel")
            meta.update(scale=[self.scale[i] for i in keep], translate=[self.translation[i] for i in keep])
            if self.class_colors:
                from napari.utils.colormaps import DirectLabelColormap

                colors: dict[int | None, Any] = {k: v for k, v in self.class_colors.items()}
                colors.setdefault(None, (0.5, 0.5, 0.5, 1.0))
                colors[0] = (0, 0, 0, 0)
                meta["colormap"] = DirectLabelColormap(color_dict=colors)
            if self.class_names:
                meta["features"] = {
                    "index": list(self.class_names),
                    "class": list(self.class_names.values()),
                }
            return [(data, meta, "labels")]

        meta.update(scale=scale, translate=translate, rgb=self.rgb)
        if self.channel_axis is not None:
            meta["channel_axis"] = self.channel_axis
            meta["name"] = self.channel_names or [f"{self.name} c{i}" for i in range(self.shape[self.channel_axis])]
            meta["scale"] = [s for i, s in enumerate(self.scale) if i != self.channel_axis]
            meta["translate"] = [t for i, t in enumerate(self.translation) if i != self.channel_axis]
            if self.contrast_limits:
                meta["contrast_limits"] = [list(c) for c in self.contrast_limits]
            meta.pop("rgb")
        elif self.contrast_limits and not self.rgb:
            meta["contrast_limits"] = list(self.contrast_limits[0])
        return [(data, meta, "image")]
