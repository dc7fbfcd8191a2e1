"""Export label images to OME-Zarr labels, a pyramidal OME-TIFF or GeoJSON polygons for QuPath, block by block.

The input is a labels :class:`Pyramid` (a label store, ``open_labels(image)[name]``) or a napari Labels layer's data
and attributes. Every format reads level 0 a block at a time, so memory does not grow with the image. Outputs are
written under a temporary name beside the target and renamed when complete: a failed or cancelled export never
leaves a file that looks whole. The temporary's name holds the writing process (host and pid), so the temporaries of
a killed export are removed by the next export into that folder, and those of a running one are left alone.
Labels inside an existing OME-Zarr image are listed only once written.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import uuid
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import dask.array as da
import numpy as np

from napari_hires.errors import HiresError, HiresWarning
from napari_hires.io.output_lock import process_running
from napari_hires.io.output_path import check_output, check_replaceable, check_writable
from napari_hires.io.progress import Progress, ticker
from napari_hires.io.pyramid import Pyramid

FORMATS = ("ome-zarr", "tiff", "geojson")
_ALIASES = {"ome-zarr": "ome-zarr", "zarr": "ome-zarr", "tiff": "tiff", "tif": "tiff", "geojson": "geojson"}
_SUFFIXES = {".zarr": "ome-zarr", ".tif": "tiff", ".tiff": "tiff", ".geojson": "geojson", ".json": "geojson"}
#: TIFF tile side in pixels; reduced levels go down to about this size.
TILE = 512
#: Chunk side of dask arrays wrapped around in-memory layer data.
_CHUNK = 1024
_AXES_BY_NDIM = {2: "yx", 3: "zyx", 4: "tzyx"}
#: Microns per unit of a Pyramid's y/x units (NGFF names or symbols); scales without units are taken as µm.
_UM_PER_UNIT = {"micrometer": 1.0, "µm": 1.0, "um": 1.0, "nanometer": 1e-3, "nm": 1e-3, "millimeter": 1e3, "mm": 1e3}
#: An export temporary: ".partial-HOST-PID-RANDOM-NAME", HOST the first 8 hex digits of the host name's SHA-1.
_PARTIAL = re.compile(r"^\.partial-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}-.+$")


# ---------------------------------------------------------------------------------------------------- inputs


def labels_from_layer_data(data: Any, attributes: dict[str, Any] | None = None) -> Pyramid:
    """A labels Pyramid from napari Labels data (an array or a multiscale sequence) and layer attributes.

    A multiscale layer's data is napari's ``MultiScaleData`` (a Sequence, not a list, whose ``__array__`` is the
    coarsest level): its levels are taken one by one, as the lazy arrays over the store they are, so level 0 is the
    full resolution. Class names come from ``features`` (columns ``index`` and ``class``, as napari-hires readers set
    them) or ``metadata["class_names"]``; colours from a direct ``colormap``, or the layer's colormap for named values.
    """
    attrs = attributes or {}
    multiscale = isinstance(data, Sequence) and not isinstance(data, (str, bytes))
    levels = [_as_dask(level) for level in (data if multiscale else [data])]
    if not levels:
        raise HiresError("the labels layer has no data; paint or open labels before exporting")
    ndim = levels[0].ndim
    if ndim not in _AXES_BY_NDIM:
        raise HiresError(f"labels of {ndim} dimensions (shape {levels[0].shape}) cannot be exported; "
                         "export 2-d (y, x) labels, or 3-d/4-d with z and t")
    names = _class_names(attrs)
    scale = attrs.get("scale")
    translate = attrs.get("translate")
    return Pyramid(
        levels=levels,
        axes=_AXES_BY_NDIM[ndim],
        scale=tuple(float(s) for s in scale) if scale is not None else (1.0,) * ndim,
        translation=tuple(float(t) for t in translate) if translate is not None else (0.0,) * ndim,
        name=str(attrs.get("name") or "labels"),
        kind="labels",
        class_names=names,
        class_colors=_class_colors(attrs.get("colormap"), names),
        source=(attrs.get("metadata") or {}).get("source"),
    )


def open_label_source(path: str | os.PathLike, name: str | None = None) -> Pyramid:
    """The labels at path: an OME-Zarr label image, a ``labels/`` child of an OME-Zarr image, or integer pixels."""
    from napari_hires.io.readers import open_image, open_labels

    pyr = open_image(path)
    if pyr.kind == "labels":
        return pyr
    children = open_labels(path)
    if children:
        if name in children:
            return children[name]
        if name is None and len(children) == 1:
            return next(iter(children.values()))
        raise HiresError(f"{path} holds the label images {', '.join(sorted(children))}; pick one with --name")
    single_channel = "c" not in pyr.axes or pyr.shape[pyr.axes.index("c")] == 1
    if np.issubdtype(pyr.dtype, np.integer) and single_channel and not pyr.rgb:
        return replace(pyr, kind="labels")
    raise HiresError(f"{path} holds a {pyr.dtype} image with axes {pyr.axes!r}, not labels; "
                     "give a label image (single-channel integers) or an OME-Zarr image with labels/")


def _as_dask(level: Any) -> da.Array:
    """A dask array over one level, chunked like its store (zarr) or in 1024-pixel blocks (in-memory arrays)."""
    if isinstance(level, da.Array):
        array = level
    else:
        stored = getattr(level, "shards", None) or getattr(level, "chunks", None)
        if not (isinstance(stored, tuple) and all(isinstance(c, int) for c in stored)):
            level = np.asarray(level)
            stored = tuple(1 if i < level.ndim - 2 else _CHUNK for i in range(level.ndim))
        array = da.from_array(level, chunks=stored, name=f"napari-hires-labels-{uuid.uuid4().hex}")
    return array.astype(np.uint8) if array.dtype == bool else array


def _class_names(attrs: dict[str, Any]) -> dict[int, str]:
    names: dict[int, str] = {}
    meta = attrs.get("metadata") or {}
    if isinstance(meta.get("class_names"), dict):
        names.update({int(k): str(v) for k, v in meta["class_names"].items()})
    features = attrs.get("features")
    if features is not None and len(features):
        columns = {str(k): list(v) for k, v in features.items()}
        column = next((c for c in ("class", "class_name", "name") if c in columns), None)
        if column is not None:
            index = columns.get("index", list(range(len(columns[column]))))
            names.update({int(i): str(n) for i, n in zip(index, columns[column])
                          if isinstance(n, str) and n})
    return names


def _class_colors(colormap: Any, names: dict[int, str]) -> dict[int, tuple[float, float, float, float]]:
    """label value -> RGBA (0..1): every entry of a direct colormap, else the colormap's colour of each named value."""
    color_dict = getattr(colormap, "color_dict", None)
    if color_dict:
        return {int(k): tuple(float(c) for c in v) for k, v in color_dict.items() if k is not None}
    if names and hasattr(colormap, "map"):
        values = sorted(names)
        rgba = np.asarray(colormap.map(np.asarray(values)))
        return {v: tuple(float(c) for c in rgba[i]) for i, v in enumerate(values)}
    return {}


# ---------------------------------------------------------------------------------------------------- export


def export_format(format: str | None, out: str | os.PathLike | None = None) -> str:
    """The export format: the one named (ome-zarr, tiff, geojson), else the one the output's suffix implies."""
    if format is not None:
        key = str(format).strip().lower()
        if key not in _ALIASES:
            raise HiresError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
        return _ALIASES[key]
    if out is None:
        raise HiresError("no output path given; choose where to export the labels")
    suffix = Path(out).suffix.lower()
    if suffix not in _SUFFIXES:
        raise HiresError(f"cannot tell the export format from {str(out)!r}; name the output .zarr, .tif or .geojson, "
                         f"or give the format ({', '.join(FORMATS)})")
    return _SUFFIXES[suffix]


def export_labels(
    labels: Pyramid | Any,
    out: str | os.PathLike | None,
    format: str | None = None,
    *,
    image: str | os.PathLike | None = None,
    name: str | None = None,
    overwrite: bool = False,
    progress: Progress = False,
    block: int = 4096,
) -> str:
    """Export labels (a Pyramid or napari Labels data) to ``out`` as ome-zarr, tiff or geojson; returns the path.

    ome-zarr with ``image`` adds them as ``labels/NAME`` (default "labels") of that OME-Zarr image instead of a
    standalone store. ``progress`` is True (a bar on stderr) or a callback(done, total), which may raise to cancel.
    ``block`` is the side in pixels of the level-0 blocks read at a time.
    """
    pyr = _checked(labels if isinstance(labels, Pyramid) else labels_from_layer_data(labels))
    fmt = export_format(format, out if out is not None else image)
    if block < 16:
        raise HiresError(f"block must be at least 16 pixels, got {block}")
    if image is not None:
        if fmt != "ome-zarr":
            raise HiresError(f"an image to add labels to only applies to ome-zarr export, not {fmt}")
        if out is not None and Path(out).resolve() != Path(image).resolve():
            raise HiresError(f"give either an output path ({out}) or an image to add the labels to ({image}), not both")
        from napari_hires.io.ome_zarr_writer import add_labels

        return add_labels(image, name or "labels", pyr, overwrite=overwrite, progress=progress)
    if out is None:
        raise HiresError("no output path given; choose where to export the labels")
    out = Path(out).expanduser()
    _check_output(out, fmt, overwrite)
    check_output(out, [pyr.source])
    check_writable(out)
    if name:
        pyr = replace(pyr, name=name)
    if fmt == "tiff":
        pyr = _tiff_dtype(pyr)
    with _atomic(out) as tmp:
        if fmt == "ome-zarr":
            from napari_hires.io.ome_zarr_writer import write_ome_zarr

            write_ome_zarr(pyr, tmp, derive_levels=True, progress=progress, **_as_deep(pyr))
        elif fmt == "tiff":
            _write_tiff(pyr, tmp, progress, block)
        else:
            _write_geojson(pyr, tmp, progress, block)
    return str(out)


def _checked(pyr: Pyramid) -> Pyramid:
    if not (np.issubdtype(pyr.dtype, np.integer) or pyr.dtype == bool):
        raise HiresError(f"{pyr.name!r} holds {pyr.dtype} values; labels must be integers (export an integer "
                         "Labels layer or a label image)")
    if pyr.dtype == bool:
        pyr = pyr.with_levels([lv.astype(np.uint8) for lv in pyr.levels])
    return pyr if pyr.kind == "labels" else replace(pyr, kind="labels")


def _as_deep(pyr: Pyramid) -> dict[str, int]:
    """Writer arguments that derive as many levels as a multiscale input has (the writer's default for one level)."""
    return {"min_size": max(pyr.level_yx_shape(len(pyr.levels) - 1))} if len(pyr.levels) > 1 else {}


def _yx_levels(pyr: Pyramid) -> list[da.Array]:
    """The levels as 2-d (y, x) arrays; other axes must have one element (TIFF and GeoJSON are 2-d)."""
    extra = {a: n for a, n in zip(pyr.axes, pyr.shape) if a not in "yx" and n != 1}
    if extra:
        raise HiresError(f"{pyr.name!r} has axes {pyr.axes!r} of shape {pyr.shape}; TIFF and GeoJSON export "
                         "take 2-d labels, so export to ome-zarr instead")
    index = tuple(slice(None) if a in "yx" else 0 for a in pyr.axes)
    flip = pyr.axes.index("x") < pyr.axes.index("y")
    return [lv[index].T if flip else lv[index] for lv in pyr.levels]


def _check_output(out: Path, fmt: str, overwrite: bool) -> None:
    if not out.parent.is_dir():
        raise HiresError(f"the folder {out.parent} does not exist; create it or choose another output path")
    check_replaceable(out, overwrite, folder=fmt == "ome-zarr")


@contextmanager
def _atomic(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out`` (same suffix) that replaces ``out`` only if the block completes."""
    remove_stale_partials(out.parent)
    tmp = out.with_name(f".partial-{_host_id()}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{out.name}")
    try:
        yield tmp
        if out.is_dir():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove the export temporaries in ``folder`` whose process (on this host) has ended; returns those removed.

    A killed export cannot clean up after itself. Temporaries of a live process, and of other hosts (whose processes
    cannot be checked from here), are kept.
    """
    host = _host_id()
    stale = []
    for path in folder.iterdir():
        match = _PARTIAL.match(path.name)
        if match and match["host"] == host and not process_running(int(match["pid"])):
            _remove(path)
            stale.append(path)
    return stale


def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- GeoJSON


def _write_geojson(pyr: Pyramid, path: Path, progress: Progress, block: int) -> None:
    from napari_hires.labels.geojson import block_boxes, write_geojson

    level0 = _yx_levels(pyr)[0]
    colors = {v: tuple(int(round(255 * c)) for c in rgba[:3]) for v, rgba in pyr.class_colors.items()}
    tick, close = ticker(progress, len(block_boxes(*level0.shape, block)), f"tracing {path.name}")
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            write_geojson(level0, fh, class_names=pyr.class_names, class_colors=colors, block=block, tick=tick)
    finally:
        close()


# ---------------------------------------------------------------------------------------------------- TIFF


def _write_tiff(pyr: Pyramid, path: Path, progress: Progress, block: int) -> None:
    """A tiled, zlib-compressed OME-TIFF: level 0 then reduced levels as SubIFDs, each written from tiles."""
    import tifffile

    work = path.with_name(f"{path.name}.levels")  # named like the partial, so a killed run's is cleaned too
    work.mkdir()
    try:
        levels = _tiff_levels(pyr, work, progress)
        width = max(TILE, block // TILE * TILE)
        total = sum(-(-lv.shape[0] // TILE) * -(-lv.shape[1] // width) for lv in levels)
        tick, close = ticker(progress, total, f"writing {path.name}")
        nbytes = sum(lv.size for lv in levels) * levels[0].dtype.itemsize
        try:
            with tifffile.TiffWriter(path, bigtiff=nbytes > 2**31, ome=True) as tif:
                for k, level in enumerate(levels):
                    tif.write(
                        _tiles(level, width, tick), shape=level.shape, dtype=level.dtype, tile=(TILE, TILE),
                        compression="zlib", photometric="minisblack",
                        **({"subifds": len(levels) - 1,
                            "metadata": {"axes": "YX", "Name": pyr.name, **_physical_size(pyr)}} if k == 0
                           else {"subfiletype": 1, "metadata": None}),
                    )
        finally:
            close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tiff_dtype(pyr: Pyramid) -> Pyramid:
    """64-bit labels as the smallest unsigned type holding their values (OME-TIFF has none wider than 32 bits).

    Costs one pass over level 0 for the value range; labels that no such type holds are refused before any writing.
    """
    if pyr.dtype.itemsize < 8:
        return pyr
    low, high = (int(v) for v in da.compute(pyr.levels[0].min(), pyr.levels[0].max()))
    keep = "export to ome-zarr or geojson, which keep 64-bit labels"
    if low < 0:
        raise HiresError(f"{pyr.name!r} holds {pyr.dtype} labels from {low} to {high}; OME-TIFF has no 64-bit "
                         "integers and negative labels fit no unsigned type: renumber them from 0 (e.g. "
                         f"skimage.segmentation.relabel_sequential) or {keep}")
    dtype = next((np.dtype(t) for t in (np.uint8, np.uint16, np.uint32) if high <= np.iinfo(t).max), None)
    if dtype is None:
        raise HiresError(f"{pyr.name!r} holds {pyr.dtype} labels up to {high}, beyond uint32, the widest integers "
                         "of OME-TIFF: renumber them (e.g. skimage.segmentation.relabel_sequential) or " + keep)
    warnings.warn(f"{pyr.name!r} holds {pyr.dtype} labels {low}..{high}; OME-TIFF has no 64-bit integers, so they "
                  f"are written as {dtype}, the smallest type that holds them", HiresWarning, stacklevel=3)
    return pyr.with_levels([level.astype(dtype) for level in pyr.levels])


def _physical_size(pyr: Pyramid) -> dict[str, Any]:
    """OME PhysicalSizeY/X in µm from the y/x scale, so the TIFF lands on the image's pixel grid; none if unscaled."""
    sizes: dict[str, Any] = {}
    for axis in "yx":
        scale, unit = pyr.scale[pyr.axes.index(axis)], pyr.units.get(axis)
        factor = _UM_PER_UNIT.get(unit or "µm")
        if factor is not None and (scale != 1.0 or unit is not None):
            sizes.update({f"PhysicalSize{axis.upper()}": scale * factor, f"PhysicalSize{axis.upper()}Unit": "µm"})
    return sizes


def _tiff_levels(pyr: Pyramid, work: Path, progress: Progress) -> list[da.Array]:
    """The Pyramid's own levels; a single large level gets mode-downsampled levels, built in a scratch store."""
    levels = _yx_levels(pyr)
    if len(levels) > 1 or max(levels[0].shape) <= TILE:
        return levels
    import zarr

    from napari_hires.io.ome_zarr_writer import write_ome_zarr

    flat = Pyramid(levels=levels[:1], axes="yx", scale=(1.0, 1.0), translation=(0.0, 0.0), kind="labels")
    store = write_ome_zarr(flat, work / "levels.zarr", derive_levels=True, min_size=TILE, progress=progress)
    group = zarr.open_group(store, mode="r")
    arrays = [group[str(k)] for k in range(len(group.attrs["ome"]["multiscales"][0]["datasets"]))]
    return [da.from_array(a, chunks=a.chunks) for a in arrays]


def _tiles(level: da.Array, width: int, tick: Callable[[], None]) -> Iterator[np.ndarray]:
    """TILE x TILE tiles in row order, read ``TILE`` rows by ``width`` columns at a time (bounded memory)."""
    from napari_hires.io.region_reader import RegionReader

    reader = RegionReader(level)
    height, full = level.shape
    for y in range(0, height, TILE):
        for x0 in range(0, full, width):
            strip = reader.read((slice(y, min(y + TILE, height)), slice(x0, min(x0 + width, full))))
            for x in range(0, strip.shape[1], TILE):
                yield np.ascontiguousarray(strip[:, x:x + TILE])
            tick()
