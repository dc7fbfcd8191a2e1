"""TIFF, OME-TIFF and SVS pyramids through tifffile's zarr store (lazy), and PNG/JPEG (small, read at once)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from napari_hires.errors import ImageReadError
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.readers import image_contrast, lazy_level

#: tifffile series axis letters -> ours; "S" (RGB samples) becomes a last "c" axis.
_TIFF_AXES = {"T": "t", "C": "c", "Z": "z", "Y": "y", "X": "x", "S": "c"}
#: Microns per unit of OME PhysicalSize*Unit.
_UM_PER = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
#: Pixels per inch that image editors write when nothing was measured.
_SCREEN_DPI = {72, 96}
#: An axis no metadata names (tifffile's "Q" for a plain ``imwrite`` of a (5, H, W) array, "I" for a run of pages)
#: with 2 to this many planes is read as channels when the file has no channel axis; a longer one is a t or z stack.
MAX_GUESSED_CHANNELS = 8
#: A single-level, uncompressed, contiguous TIFF (stored as one strip: tifffile's store can only read it whole) wider or
#: taller than this is memory-mapped instead and read in TILE x TILE chunks.
STRIP_MAP_ABOVE = 2048
TILE = 1024


def open_tiff(path: Path) -> Pyramid:
    """The first series of a TIFF/OME-TIFF/SVS, every resolution level a lazy dask array over tifffile's zarr store."""
    import tifffile

    tif = None
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        stores = [series.aszarr(level=i) for i in range(len(series.levels))]
        arrays = [zarr.open_array(store=store, mode="r") for store in stores]
    except Exception as err:  # tifffile raises many kinds (TiffFileError, IndexError, struct.error, ...)
        if tif is not None:
            tif.close()
        raise ImageReadError(
            f"{path}: not a readable TIFF ({type(err).__name__}: {err}). "
            "The file may be truncated or damaged: copy or export it again."
        ) from err
    index, axes = _axes(series.axes, series.shape, path)
    mapped = _mapped(path, series, arrays)
    stored = [mapped] if mapped is not None else [
        lazy_level(a, f"{path} (level {i})", keep=tif) for i, a in enumerate(arrays)
    ]
    levels = [level[index] for level in stored]
    scale, units, channel_names = _physical(tif, axes, len(axes))
    n_channels = levels[0].shape[axes.index("c")] if "c" in axes else 0
    return Pyramid(
        levels=levels,
        axes=axes,
        scale=scale,
        translation=(0.0,) * len(axes),
        name=_stem(path),
        channel_names=channel_names if channel_names and len(channel_names) == n_channels else None,
        contrast_limits=image_contrast(levels, axes, None),
        units=units,
        source=str(path),
    )


def _mapped(path: Path, series: Any, arrays: list[zarr.Array]) -> da.Array | None:
    """Level 0 memory-mapped in TILE chunks if it is the only level and one large uncompressed strip, else None."""
    import tifffile

    level = arrays[0]
    if len(arrays) > 1 or series.dataoffset is None or level.chunks != level.shape:
        return None
    if max(level.shape) <= STRIP_MAP_ABOVE:
        return None
    try:
        data = tifffile.memmap(path, series=0, mode="r")
    except ValueError:  # not mappable as stored (e.g. bit order): the store reads it
        return None
    if data.shape != level.shape:
        return None
    chunks = tuple(TILE if n > STRIP_MAP_ABOVE else n for n in data.shape)
    return da.from_array(data, chunks=chunks, name=f"napari-hires-map-{uuid.uuid4().hex}")


def _axes(tiff_axes: str, shape: tuple[int, ...], path: Path) -> tuple[tuple[Any, ...], str]:
    """Index dropping singleton C/S and unknown axes, and our letters: the first unknown axis of 2 to
    MAX_GUESSED_CHANNELS planes is c if nothing else is, other unknown axes become a free t or z."""
    index: list[Any] = []
    letters = ""
    has_channels = any(letter in "CS" and size > 1 for letter, size in zip(tiff_axes, shape))
    for letter, size in zip(tiff_axes, shape):
        ours = _TIFF_AXES.get(letter)
        if size == 1 and (ours is None or letter in "CS"):
            index.append(0)
            continue
        if ours is None and not has_channels and "c" not in letters and size <= MAX_GUESSED_CHANNELS:
            ours = "c"
        if ours is None or ours in letters:
            free = [a for a in "tz" if a not in letters and a.upper() not in tiff_axes]
            if letter == "S" or not free:
                raise ImageReadError(
                    f"{path}: cannot map the TIFF axes {tiff_axes!r} (shape {shape}) to t/c/z/y/x; "
                    "convert it to OME-Zarr with a single channel axis."
                )
            ours = free[0]
        index.append(slice(None))
        letters += ours
    return tuple(index), letters


def _physical(tif: Any, axes: str, ndim: int) -> tuple[tuple[float, ...], dict[str, str], list[str] | None]:
    """Pixel size in µm (OME PhysicalSize, SVS MPP, else resolution tags), units, and OME channel names; 1.0 where
    unknown."""
    import tifffile

    sizes: dict[str, float] = {}
    names: list[str] | None = None
    if tif.is_ome and tif.ome_metadata:
        image = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        for axis in "zyx":
            value = pixels.get(f"PhysicalSize{axis.upper()}")
            factor = _UM_PER.get(str(pixels.get(f"PhysicalSize{axis.upper()}Unit", "µm")))
            if isinstance(value, (int, float)) and value > 0 and factor is not None:
                sizes[axis] = float(value) * factor
        channels = pixels.get("Channel", [])
        channels = channels if isinstance(channels, list) else [channels]
        if channels and all(isinstance(c, dict) and c.get("Name") for c in channels):
            names = [str(c["Name"]) for c in channels]
    elif tif.is_svs:
        mpp = tifffile.tifffile.svs_description_metadata(tif.pages.first.description).get("MPP")
        if isinstance(mpp, (int, float)) and mpp > 0:
            sizes = {"y": float(mpp), "x": float(mpp)}
    else:
        sizes = _resolution_tags(tif)
    scale = tuple(sizes.get(a, 1.0) for a in axes)
    units = {a: "micrometer" for a in sizes if a in axes}
    return scale, units, names


def _resolution_tags(tif: Any) -> dict[str, float]:
    """µm per pixel in y and x from the TIFF resolution tags: pixels per centimetre or inch, or per ImageJ unit.
    None of those (unit NONE without ImageJ's unit), or 72 or 96 pixels per inch (the screen resolution image editors
    write by default, not a measurement), give no size."""
    page = tif.pages.first
    x, y = page.get_resolution()
    unit = int(page.resolutionunit)
    if unit == 3:  # RESUNIT.CENTIMETER
        um_per_unit = 1e4
    elif unit == 2 and not {round(x), round(y)} <= _SCREEN_DPI:  # RESUNIT.INCH
        um_per_unit = 25400.0
    elif unit == 1 and tif.is_imagej:
        name = str((tif.imagej_metadata or {}).get("unit", "")).replace("\\u00B5", "µ")
        um_per_unit = _UM_PER.get("um" if name == "micron" else name)
    else:
        um_per_unit = None
    if um_per_unit is None or not x > 0 or not y > 0:
        return {}
    return {"y": um_per_unit / y, "x": um_per_unit / x}


def open_flat(path: Path) -> Pyramid:
    """A PNG or JPEG read at once (they are small): grayscale "yx" or colour "yxc"."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode in ("1", "P", "PA", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
            data = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageReadError(f"{path}: not a readable PNG/JPEG ({err}); export the image again.") from err
    axes = "yxc" if data.ndim == 3 else "yx"
    levels = [da.from_array(data, chunks=(1024, 1024) + data.shape[2:])]
    return Pyramid(
        levels=levels,
        axes=axes,
        scale=(1.0,) * data.ndim,
        translation=(0.0,) * data.ndim,
        name=_stem(path),
        contrast_limits=image_contrast(levels, axes, None),
        source=str(path),
    )


def _stem(path: Path) -> str:
    """'slide' for slide.ome.tif."""
    name = path.name.rsplit(".", 1)[0]
    return name[:-4] if name.lower().endswith(".ome") else name
