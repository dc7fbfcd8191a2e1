"""Open any supported image lazily as a :class:`Pyramid`: OME-Zarr 0.4/0.5, plain zarr, TIFF/OME-TIFF/SVS, PNG/JPEG.

This module sniffs the format and holds what every format shares: dask levels whose chunk reads fail with a
clear :class:`ImageReadError`, axis guessing and contrast limits taken from the coarsest level only.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from napari_hires.errors import ImageReadError
from napari_hires.io.build_state import is_zarr
from napari_hires.io.pyramid import Pyramid

TIFF_SUFFIXES = (".tif", ".tiff", ".svs")
FLAT_SUFFIXES = (".png", ".jpg", ".jpeg")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: A single-level image up to this many elements is scanned for contrast limits in a _STATS_WINDOW, a larger one in a
#: _LEVEL0_WINDOW.
SMALL_IMAGE = 4096 * 4096
#: Side of the window of the coarsest level scanned for contrast limits (bounds the pixels read when opening).
_STATS_WINDOW = 1024
#: Side of the window at the centre of a large single level scanned instead (a handful of its tiles or chunks).
_LEVEL0_WINDOW = 512


def open_image(path: str | os.PathLike | Any) -> Pyramid:
    """Open the image at path lazily as a Pyramid (OME-Zarr 0.4/0.5, zarr array/group, TIFF/OME-TIFF/SVS, PNG/JPEG).

    ``path`` may also be a zarr ``Store`` (e.g. to read through a wrapper store); it is then read as zarr.
    """
    if not isinstance(path, (str, os.PathLike)):
        from napari_hires.io.read_ngff import open_zarr

        return open_zarr(path)
    p = _existing(path)
    fmt = _format_of(p)
    if fmt == "zarr":
        from napari_hires.io.read_ngff import open_zarr

        return open_zarr(p)
    if fmt == "tiff":
        from napari_hires.io.read_tiff import open_tiff

        return open_tiff(p)
    if fmt == "flat":
        from napari_hires.io.read_tiff import open_flat

        return open_flat(p)
    raise ImageReadError(
        f"{p}: not a format napari-hires reads; use OME-Zarr/zarr, TIFF/OME-TIFF/SVS, PNG or JPEG"
    )


def open_labels(path: str | os.PathLike | Any) -> dict[str, Pyramid]:
    """The OME-Zarr ``labels/`` groups of an image, name -> Pyramid(kind="labels"); empty for other formats."""
    if not isinstance(path, (str, os.PathLike)):
        from napari_hires.io.read_ngff import open_zarr_labels

        return open_zarr_labels(path)
    p = _existing(path)
    if _format_of(p) != "zarr":
        return {}
    from napari_hires.io.read_ngff import open_zarr_labels

    return open_zarr_labels(p)


def can_read(path: str | os.PathLike) -> bool:
    """Cheap sniffing (a few small metadata files at most): is this a format we handle?"""
    try:
        p = Path(path)
        if not p.exists():
            return False
        fmt = _format_of(p)
        if fmt == "zarr":
            return _zarr_is_ours(p)
        return fmt is not None
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- format sniffing
def _existing(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"no such file or directory: {p}")
    return p


def _format_of(p: Path) -> str | None:
    """'zarr', 'tiff', 'flat' or None, from the name and (for unknown names) the first bytes."""
    suffix = p.suffix.lower()
    if p.is_dir():
        return "zarr" if suffix == ".zarr" or is_zarr(p) else None
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in FLAT_SUFFIXES:
        return "flat"
    with open(p, "rb") as fh:
        return "tiff" if fh.read(4) in _TIFF_MAGIC else None


def _read_json(file: Path) -> dict | None:
    """The JSON object in file; None if absent; raises ValueError if it is not valid JSON."""
    if not file.is_file():
        return None
    data = json.loads(file.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return data


def _zarr_is_ours(p: Path) -> bool:
    """A zarr array, an OME-Zarr image (or bioformats2raw wrapper) or a group holding array "0"; broken JSON counts."""
    try:
        meta = _read_json(p / "zarr.json")
        if meta is not None:
            if meta.get("node_type") == "array":
                return True
            attrs = meta.get("attributes", {}).get("ome", meta.get("attributes", {}))
            zero = _read_json(p / "0" / "zarr.json") or {}
            zero_is_array = zero.get("node_type") == "array"
        else:
            if (p / ".zarray").is_file():
                return True
            if not (p / ".zgroup").is_file():
                return False
            attrs = _read_json(p / ".zattrs") or {}
            zero_is_array = (p / "0" / ".zarray").is_file()
    except (ValueError, UnicodeDecodeError):
        return True  # it claims to be zarr but its metadata is broken: ours to report clearly
    return "multiscales" in attrs or "bioformats2raw.layout" in attrs or zero_is_array


# ---------------------------------------------------------------------------------------------- lazy levels
class GuardedArray:
    """Array-like over a zarr (or tifffile zarr) array whose read errors become ImageReadError naming file and chunk.

    ``where`` names the array in messages; with ``chunk_files`` (zarr stores on disk) a bad chunk is named by its
    file under ``where``. ``keep`` holds what reads depend on (e.g. the open TiffFile) alive with the dask array.
    """

    def __init__(self, array: Any, where: str, keep: Any = None, chunk_files: bool = False) -> None:
        self.array = array
        self.where = where
        self.keep = keep
        self.chunk_files = chunk_files
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(array.chunks)

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.array[key])
        except ImageReadError:
            raise
        except Exception as err:  # any codec, I/O or format error: say which file and chunk, not a deep trace
            raise ImageReadError(
                f"cannot read {self._describe(key)}: {type(err).__name__}: {err}. "
                "The data is damaged or incomplete: copy or export it again."
            ) from err

    def _describe(self, key: Any) -> str:
        """'chunk <file>/<chunk key> [region]' for zarr, 'chunk (i, j) [region] of <file>' otherwise."""
        if not isinstance(key, tuple) or not all(isinstance(k, slice) for k in key):
            return f"region {key!r} of {self.where}"
        region = ", ".join(f"{k.start or 0}:{k.stop}" for k in key)
        index = tuple((k.start or 0) // c for k, c in zip(key, self.chunks))
        encode = getattr(getattr(self.array, "metadata", None), "encode_chunk_key", None)
        if encode is not None and self.where.endswith(self.array.path or "\0"):
            return f"chunk {self.where}/{encode(index)} [{region}]"
        return f"chunk {index} [{region}] of {self.where}"


def lazy_level(array: Any, where: str, keep: Any = None, chunk_files: bool = False) -> da.Array:
    """A dask array over one pyramid level, one task per stored chunk, reading nothing now."""
    guarded = GuardedArray(array, where, keep, chunk_files)
    return da.from_array(
        guarded,
        chunks=guarded.chunks,
        name=f"napari-hires-read-{uuid.uuid4().hex}",
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * guarded.ndim, dtype=guarded.dtype),
    )


def guess_axes(shape: tuple[int, ...], names: Any = None) -> str:
    """Axis letters for an array without NGFF axes: its dimension names if they are t/c/z/y/x, else from ndim."""
    if names and all(isinstance(n, str) for n in names):
        letters = "".join(n.lower() for n in names)
        if len(letters) == len(shape) and set(letters) <= set("tczyx") and len(set(letters)) == len(letters):
            return letters
    ndim = len(shape)
    if ndim == 2:
        return "yx"
    if ndim == 3:
        return "yxc" if shape[-1] in (3, 4) else "cyx"
    if ndim == 4:
        return "zyxc" if shape[-1] in (3, 4) else "czyx"
    if ndim == 5:
        return "tczyx"
    raise ImageReadError(f"cannot tell the axes of a {ndim}-d array of shape {shape}: give it OME-Zarr axes metadata")


def contrast_from_levels(levels: list[da.Array], axes: str) -> list[tuple[float, float]] | None:
    """Per-channel (0.1, 99.9) percentile limits from a bounded window of the coarsest level.

    A single large level (no coarser one to look at) is sampled in a small window at its centre, so that opening
    reads a handful of its chunks and napari need not scan it.
    """
    coarsest = levels[-1]
    side = _LEVEL0_WINDOW if len(levels) == 1 and coarsest.size > SMALL_IMAGE else _STATS_WINDOW
    window = central_window(coarsest, axes, side)
    if "c" in axes:
        window = np.moveaxis(window, axes.index("c"), 0)
    else:
        window = window[np.newaxis]
    return [_limits(channel) for channel in window]


def central_window(level: Any, axes: str, side: int) -> np.ndarray:
    """The centre of a (lazy) level, read: at most ``side`` pixels in y and x, every channel, the middle plane of
    other axes (kept, of length 1), in the level's own axis order. What image statistics are taken from."""
    index: list[slice] = []
    for axis, size in zip(axes, level.shape):
        if axis in "yx":
            start = max(0, (size - side) // 2)
            index.append(slice(start, start + side))
        elif axis == "c":
            index.append(slice(None))
        else:
            index.append(slice(size // 2, size // 2 + 1))
    return np.asarray(level[tuple(index)])


def _limits(values: np.ndarray) -> tuple[float, float]:
    values = values.astype(np.uint8) if values.dtype == bool else values
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if finite.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(finite, (0.1, 99.9)))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def image_contrast(levels: list[da.Array], axes: str, known: list[tuple[float, float]] | None) -> Any:
    """Contrast limits for an image: from metadata if known, none for uint8 RGB, else from the coarsest level."""
    if known:
        return known
    rgb_like = axes.endswith("c") and levels[0].shape[-1] in (3, 4) and levels[0].dtype == np.uint8
    return None if rgb_like else contrast_from_levels(levels, axes)
