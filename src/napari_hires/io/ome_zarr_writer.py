"""Write a Pyramid (and label Pyramids) as an OME-Zarr 0.5 store, block by block, NGFF metadata last.

Layout: arrays ``0, 1, ...`` in the root group, label images under ``labels/NAME``; axes in NGFF order (t, c, z, y, x),
zstd-compressed chunks of ``chunk`` pixels in y and x, optionally inside shards of ``shard`` pixels.
Each write task owns one block (a whole shard, or a run of whole chunks) so no two tasks touch the same stored object.
Memory is bounded by ``MAX_IN_FLIGHT`` blocks whatever the image size.

Completeness: the root group is created with ``{"napari_hires": {"state": "writing"}}`` and gets its ``ome``
multiscales metadata only after every level of every image has been written, so a killed run leaves a store that
readers recognise as incomplete instead of one that looks whole.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from napari_hires.errors import HiresError, OutputExistsError
from napari_hires.io.build_state import MARKER, RUN_RECORD, store_marker
from napari_hires.io.downsample import downsample_mean, downsample_mode
from napari_hires.io.job_identity import describe_difference
from napari_hires.io.output_path import check_output, check_writable, prepare_output
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.region_reader import RegionReader

#: Threads that compute and write blocks, and how many blocks may be read, computed or written at once.
WORKERS = max(2, min(4, os.cpu_count() or 2))
MAX_IN_FLIGHT = 2 * WORKERS
#: Side in pixels of an unsharded write block (rounded to whole chunks): big enough to amortise task overhead.
BLOCK_SIDE = 1024
NGFF_ORDER = "tczyx"
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_UNITS = {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter", "m": "meter",
          "s": "second", "ms": "millisecond"}
_CHANNEL_COLORS = ["FFFFFF", "00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00"]
_RGB_COLORS = ["FF0000", "00FF00", "0000FF", "FFFFFF"]

Progress = bool | Callable[[int, int], None]


@dataclass(frozen=True)
class _Plan:
    """One image or label image as it will be stored: NGFF axes, per-level arrays and where their pixels come from."""

    pyramid: Pyramid
    path: str  # group path in the store ("" for the image, "labels/NAME" for labels)
    axes: str  # NGFF order
    shapes: list[tuple[int, ...]]
    factors: list[tuple[float, float]]  # (y, x) downsampling of each level relative to level 0
    derive: bool  # levels > 0 computed from the written level above instead of copied from pyramid.levels
    chunks: list[tuple[int, ...]]
    shards: list[tuple[int, ...] | None]
    dtype: np.dtype

    @property
    def blocks(self) -> list[tuple[int, ...]]:
        """Write-block shape of each level: a shard, or whole chunks up to about BLOCK_SIDE in y and x."""
        out = []
        for shape, chunks, shards in zip(self.shapes, self.chunks, self.shards):
            if shards is not None:
                out.append(shards)
                continue
            out.append(tuple(
                max(c, BLOCK_SIDE // c * c) if a in "yx" else c for a, c in zip(self.axes, chunks)
            ))
        return out

    def n_blocks(self, first: int = 0) -> int:
        return sum(math.prod(math.ceil(n / b) for n, b in zip(shape, block))
                   for shape, block in list(zip(self.shapes, self.blocks))[first:])


# ---------------------------------------------------------------------------------------------------- public


def write_ome_zarr(
    image: Pyramid,
    out: str | os.PathLike,
    *,
    labels: dict[str, Pyramid] | None = None,
    chunk: int = 512,
    shard: int | None = None,
    derive_levels: bool = False,
    overwrite: bool = False,
    progress: Progress = False,
    min_size: int = 256,
) -> str:
    """Write image (and label images under labels/NAME) as an OME-Zarr 0.5 (zarr v3) store, block by block.

    With ``derive_levels`` only level 0 of each Pyramid is read and coarser levels are computed from the written
    level above (mean for images, mode for labels) until y and x are both <= ``min_size``; otherwise every level is
    written as given. Returns the output path.
    """
    writer = OmeZarrWriter(image, out, labels=labels, chunk=chunk, shard=shard, derive_levels=derive_levels,
                           overwrite=overwrite, min_size=min_size)
    writer.write(progress=progress)
    writer.finish()
    return str(writer.out)


class OmeZarrWriter:
    """A store being written: arrays created up front, levels filled block by block, NGFF metadata written last.

    ``run`` identifies the job that writes the store (e.g. a prediction's inputs, their content and settings). A
    store left unfinished by the same ``run`` is reopened instead of refused, so that a killed job can resume (the
    caller decides which level-0 blocks are still to do, see :mod:`napari_hires.engine`), and one it completed is
    reopened read-only as ``complete``; a store of another run is refused naming what differs. The output is
    checked (:mod:`napari_hires.io.output_path`) before anything is written.
    """

    def __init__(
        self,
        image: Pyramid,
        out: str | os.PathLike,
        *,
        labels: dict[str, Pyramid] | None = None,
        chunk: int = 512,
        shard: int | None = None,
        derive_levels: bool = False,
        overwrite: bool = False,
        min_size: int = 256,
        run: dict[str, Any] | None = None,
    ) -> None:
        self.out = Path(out)
        _check_layout(chunk, shard, min_size)
        self.labels = labels or {}
        self.plans = [_plan(image, "", chunk, shard, derive_levels, min_size, None)]
        n_levels = len(self.plans[0].shapes) if derive_levels else None
        for name, label in self.labels.items():
            if not name or "/" in name or name.startswith("."):
                raise HiresError(f"label image name {name!r} is not a valid group name; use letters, digits, '-' or '_'")
            self.plans.append(_plan(label, f"labels/{name}", chunk, shard, derive_levels, min_size, n_levels))
        check_output(self.out, [plan.pyramid.source for plan in self.plans])
        self.run = run
        recorded = _recorded(self.out)
        same = not overwrite and run is not None and recorded is not None and recorded[1] == run
        #: Reopened: an unfinished store of the same run resumes; ``complete``: the same run already finished it.
        #: ``overwrite`` always starts again, as it says ("replace instead of resuming or refusing").
        self.resumed = same and recorded[0] == "writing"
        self.complete = same and recorded[0] == "complete"
        if same:
            self.root = zarr.open_group(str(self.out), mode="r" if self.complete else "r+")
            self.arrays = {plan.path: _open_arrays(self.root, plan) for plan in self.plans}
            return
        if run is not None and recorded is not None and recorded[1] is not None and not overwrite:
            done = "a complete store" if recorded[0] == "complete" else "an unfinished store"
            raise OutputExistsError(f"{self.out} already exists, {done} of another job: "
                                    f"{describe_difference(recorded[1], run)}; pass --overwrite (overwrite=True) to "
                                    "start again, or choose another output path")
        check_writable(self.out)
        prepare_output(self.out, overwrite)
        state = {"state": "writing", **({"run": run} if run is not None else {})}
        self.root = zarr.open_group(str(self.out), mode="w-", zarr_format=3, attributes={MARKER: state})
        self.arrays = {plan.path: _create_arrays(self.root, plan) for plan in self.plans}

    def write(self, progress: Progress = False, *, first: int = 0) -> None:
        """Fill every level from ``first`` on from its source (the caller has written the levels before it)."""
        total = sum(p.n_blocks(first) for p in self.plans)
        tick, close = _progress(progress, total, self.out.name)
        try:
            with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ome-zarr-writer") as pool:
                for plan in self.plans:
                    _write_levels(plan, self.arrays[plan.path], pool, tick, first=first)
        finally:
            close()

    def finish(self) -> None:
        """Write and validate the NGFF metadata, which marks the store complete (keeping the run record, so that a
        rerun of the same job recognises the store as its own, finished)."""
        if not self.complete:
            _write_metadata(self.root, self.plans, self.arrays, self.labels, self.run)


def add_labels(
    image: str | os.PathLike,
    name: str,
    labels: Pyramid,
    *,
    chunk: int = 512,
    overwrite: bool = False,
    progress: Progress = False,
) -> str:
    """Write labels as ``labels/NAME`` of an existing OME-Zarr 0.5 image, on the image's grid and levels.

    Levels are derived from level 0 (mode), as many as the image has; y/x scale and translation are the image's.
    The name is added to the ``labels`` list only once the label image and its metadata are written and validated,
    and a failed write removes the group, so readers never find a partial label image. Returns the group's path.
    """
    from dataclasses import replace

    from ome_zarr_models.v05 import Image, ImageLabel
    from ome_zarr_models.v05.labels import LabelsAttrs

    from napari_hires.io.readers import open_image

    out = Path(image)
    if not name or "/" in name or name.startswith("."):
        raise HiresError(f"label image name {name!r} is not a valid group name; use letters, digits, '-' or '_'")
    target = open_image(out)
    root = zarr.open_group(str(out), mode="r+")
    if root.metadata.zarr_format != 3 or "multiscales" not in root.attrs.get("ome", {}) or target.kind != "image":
        raise HiresError(f"{out} is not an OME-Zarr 0.5 image; write the labels to a standalone store instead, "
                         "or convert the image with `napari-hires pyramid` first")
    if labels.yx_shape != target.yx_shape:
        raise HiresError(f"labels of {labels.yx_shape[0]} x {labels.yx_shape[1]} pixels do not fit {out} "
                         f"({target.yx_shape[0]} x {target.yx_shape[1]}); export labels made on this image")
    check_output(out / "labels" / name, [labels.source])
    grid = {a: (target.scale[target.axes.index(a)], target.translation[target.axes.index(a)])
            for a in labels.axes if a in target.axes}
    labels = replace(
        labels, name=name,
        scale=tuple(grid.get(a, (s, 0))[0] for a, s in zip(labels.axes, labels.scale)),
        translation=tuple(grid.get(a, (0, t))[1] for a, t in zip(labels.axes, labels.translation)),
        units={a: u for a, u in target.units.items() if a in labels.axes},
    )
    plan = _plan(labels, f"labels/{name}", chunk, None, True, 1, len(target.levels))
    group = root.require_group("labels")
    listed = [n for n in group.attrs.get("ome", {}).get("labels", []) if n != name]
    if name in group:
        if not overwrite:
            raise OutputExistsError(f"{out} already has labels/{name}; pass --overwrite (overwrite=True) to replace "
                                    "it, or choose another name")
        group.attrs.update({"ome": LabelsAttrs(labels=listed, version="0.5").model_dump(mode="json", by_alias=True)})
        del group[name]
    try:
        arrays = _create_arrays(root, plan)
        tick, close = _progress(progress, plan.n_blocks(), f"{out.name}/labels/{name}")
        try:
            with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ome-zarr-writer") as pool:
                _write_levels(plan, arrays, pool, tick)
        finally:
            close()
        root[plan.path].attrs.update({"ome": _label_ome(plan, arrays, Image, ImageLabel, "../../")})
        ImageLabel.from_zarr(root[plan.path])
    except BaseException:
        if name in group:
            del group[name]
        raise
    attrs = LabelsAttrs(labels=[*listed, name], version="0.5")
    group.attrs.update({"ome": attrs.model_dump(mode="json", by_alias=True, exclude_none=True)})
    return str(out / "labels" / name)


# ---------------------------------------------------------------------------------------------------- planning


def _check_layout(chunk: int, shard: int | None, min_size: int) -> None:
    if chunk < 1:
        raise HiresError(f"chunk must be a positive number of pixels, got {chunk}")
    if shard is not None and (shard < chunk or shard % chunk):
        raise HiresError(f"shard {shard} must be a multiple of chunk {chunk}; pick e.g. --shard {4 * chunk}")
    if min_size < 1:
        raise HiresError(f"min_size must be a positive number of pixels, got {min_size}")


def _plan(pyr: Pyramid, path: str, chunk: int, shard: int | None, derive: bool, min_size: int,
          n_levels: int | None) -> _Plan:
    """Decide NGFF axes, level shapes, chunks and shards for one Pyramid."""
    unknown = set(pyr.axes) - set(NGFF_ORDER)
    if unknown or len(set(pyr.axes)) != len(pyr.axes):
        raise HiresError(f"{pyr.name}: axes {pyr.axes!r} cannot be written to OME-Zarr; use the letters t, c, z, y, x once each")
    axes = "".join(a for a in NGFF_ORDER if a in pyr.axes)
    dtype = _store_dtype(pyr)
    iy, ix = axes.index("y"), axes.index("x")
    if derive:
        shape = _to_ngff_shape(pyr.levels[0].shape, pyr.axes, axes)
        shapes = [shape]
        while (n_levels is None and max(shapes[-1][iy], shapes[-1][ix]) > min_size) or (
            n_levels is not None and len(shapes) < n_levels
        ):
            prev = list(shapes[-1])
            prev[iy], prev[ix] = math.ceil(prev[iy] / 2), math.ceil(prev[ix] / 2)
            shapes.append(tuple(prev))
        factors = [(2.0**k, 2.0**k) for k in range(len(shapes))]
    else:
        shapes = [_to_ngff_shape(level.shape, pyr.axes, axes) for level in pyr.levels]
        factors = [(_level_factor(shapes[0][iy], s[iy]), _level_factor(shapes[0][ix], s[ix])) for s in shapes]
    # Chunks hold one t, z and c each (channels are shown and read one layer at a time), except RGB(A) samples,
    # which are always displayed together: one chunk then holds all of them, so a tile costs one read.
    chunks, shards = [], []
    for shape in shapes:
        c = tuple(min(chunk, n) if a in "yx" else (n if a == "c" and pyr.rgb else 1) for a, n in zip(axes, shape))
        chunks.append(c)
        if shard is None:
            shards.append(None)
        else:
            shards.append(tuple(
                min(shard, math.ceil(n / ci) * ci) if a in "yx" else ci for a, n, ci in zip(axes, shape, c)
            ))
    return _Plan(pyr, path, axes, shapes, factors, derive, chunks, shards, dtype)


def _to_ngff_shape(shape: tuple[int, ...], src_axes: str, axes: str) -> tuple[int, ...]:
    return tuple(shape[src_axes.index(a)] for a in axes)


def _level_factor(n0: int, n: int) -> float:
    """Downsampling factor of a provided level: the nearest power of two when within 5 %, else the exact ratio."""
    ratio = n0 / n
    power = 2.0 ** round(math.log2(ratio))
    return power if abs(ratio / power - 1) < 0.05 else ratio


def _store_dtype(pyr: Pyramid) -> np.dtype:
    dtype = np.dtype(pyr.dtype)
    if pyr.kind != "labels":
        return dtype
    if dtype == bool:
        return np.dtype(np.uint8)
    if not np.issubdtype(dtype, np.integer):
        raise HiresError(f"label image {pyr.name!r} has dtype {dtype}; label images must hold integers")
    return dtype


def _recorded(out: Path) -> tuple[str, dict[str, Any] | None] | None:
    """(state, run record) of a napari-hires store at ``out`` ("writing" or "complete"); None when there is none
    (or its metadata is unreadable: then it is not ours to reopen)."""
    found = store_marker(out)
    if found is None or found[0].get("state") not in ("writing", "complete"):
        return None
    marker, attrs = found
    if marker["state"] == "writing":
        return "writing", marker.get("run")
    return "complete", attrs.get(RUN_RECORD)


def _open_arrays(root: zarr.Group, plan: _Plan) -> list[zarr.Array]:
    """The arrays of an unfinished store, checked against the plan (a mismatch means another job wrote it)."""
    group = root[plan.path] if plan.path else root
    arrays = [group[str(k)] for k in range(len(plan.shapes))]
    for arr, shape in zip(arrays, plan.shapes):
        if arr.shape != shape or arr.dtype != plan.dtype:
            raise OutputExistsError(f"{root.store} holds arrays of another shape or type; pass overwrite to replace it")
    return arrays


def _create_arrays(root: zarr.Group, plan: _Plan) -> list[zarr.Array]:
    group = root.require_group(plan.path) if plan.path else root
    return [
        group.create_array(
            str(k), shape=shape, dtype=plan.dtype, chunks=chunks, shards=shards, compressors=ZstdCodec(level=3),
            fill_value=0, dimension_names=tuple(plan.axes),
        )
        for k, (shape, chunks, shards) in enumerate(zip(plan.shapes, plan.chunks, plan.shards))
    ]


# ---------------------------------------------------------------------------------------------------- writing


def _write_levels(plan: _Plan, arrays: list[zarr.Array], pool: ThreadPoolExecutor, tick: Callable[[], None],
                  first: int = 0) -> None:
    """Write the levels of one Pyramid from ``first`` on; a derived level starts after the level above is written."""
    for k, (arr, block) in list(enumerate(zip(arrays, plan.blocks)))[first:]:
        if k == 0 or not plan.derive:
            source = RegionReader(plan.pyramid.levels[k])
            tasks = (_copy_task(source, plan.pyramid.axes, plan.axes, arr, sel) for sel in _block_slices(arr.shape, block))
        else:
            kernel = downsample_mode if plan.pyramid.kind == "labels" else downsample_mean
            strip = plan.chunks[k][plan.axes.index("y")]
            tasks = (_derive_task(arrays[k - 1], arr, sel, plan.axes, kernel, strip)
                     for sel in _block_slices(arr.shape, block))
        _run_bounded(pool, tasks, tick)


def _block_slices(shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    ranges = [range(0, n, b) for n, b in zip(shape, block)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(s, min(s + b, n)) for s, b, n in zip(starts, block, shape))


def _copy_task(source: RegionReader, src_axes: str, axes: str, arr: zarr.Array,
               sel: tuple[slice, ...]) -> Callable[[], None]:
    """Compute one block of a dask level (in its own axis order) and store it in NGFF order."""
    src_sel = tuple(sel[axes.index(a)] for a in src_axes)
    perm = [src_axes.index(a) for a in axes]

    def run() -> None:
        arr[sel] = np.transpose(source.read(src_sel), perm).astype(arr.dtype, copy=False)

    return run


def _derive_task(prev: zarr.Array, arr: zarr.Array, sel: tuple[slice, ...], axes: str,
                 kernel: Callable[..., np.ndarray], strip: int) -> Callable[[], None]:
    """Downsample the 2x region of the written level above into one block, reading it a strip of rows at a time."""
    iy, ix = axes.index("y"), axes.index("x")

    def run() -> None:
        out = np.empty(tuple(s.stop - s.start for s in sel), dtype=arr.dtype)
        y0, y1 = sel[iy].start, sel[iy].stop
        src = list(sel)
        src[ix] = slice(2 * sel[ix].start, min(2 * sel[ix].stop, prev.shape[ix]))
        for ys in range(y0, y1, strip):
            ye = min(ys + strip, y1)
            src[iy] = slice(2 * ys, min(2 * ye, prev.shape[iy]))
            dst: list[slice] = [slice(None)] * len(sel)
            dst[iy] = slice(ys - y0, ye - y0)
            out[tuple(dst)] = kernel(prev[tuple(src)], 2, axes)
        arr[sel] = out

    return run


def _run_bounded(pool: ThreadPoolExecutor, tasks: Iterator[Callable[[], None]], tick: Callable[[], None]) -> None:
    """Run tasks on the pool with at most MAX_IN_FLIGHT submitted at a time; the first error stops the rest."""
    in_flight: set[Future[None]] = set()

    def drain(done: set[Future[None]]) -> None:
        for future in done:
            future.result()
            tick()

    try:
        for task in tasks:
            if len(in_flight) >= MAX_IN_FLIGHT:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                drain(done)
            in_flight.add(pool.submit(task))
        while in_flight:
            done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            drain(done)
    finally:
        for future in in_flight:
            future.cancel()


def _progress(progress: Progress, total: int, name: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A (tick, close) pair: a tqdm bar on stderr, a callback(done, total), or nothing."""
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="block", desc=f"writing {name}", file=sys.stderr)
        return (lambda: bar.update(1)), bar.close
    if callable(progress):
        state = {"done": 0}
        progress(0, total)

        def tick() -> None:
            state["done"] += 1
            progress(state["done"], total)

        return tick, lambda: None
    return (lambda: None), (lambda: None)


# ---------------------------------------------------------------------------------------------------- metadata


def _write_metadata(root: zarr.Group, plans: list[_Plan], arrays: dict[str, list[zarr.Array]],
                    labels: dict[str, Pyramid], run: dict[str, Any] | None = None) -> None:
    """Build NGFF 0.5 metadata with ome-zarr-models, write it (labels first, root last) and validate the store."""
    from ome_zarr_models.v05 import Image, ImageLabel
    from ome_zarr_models.v05.labels import LabelsAttrs

    for plan in plans[1:]:
        group = root[plan.path]
        group.attrs.update({"ome": _label_ome(plan, arrays[plan.path], Image, ImageLabel, "../../")})
        ImageLabel.from_zarr(group)
    if labels:
        labels_attrs = LabelsAttrs(labels=list(labels), version="0.5")
        root["labels"].attrs.update({"ome": labels_attrs.model_dump(mode="json", by_alias=True, exclude_none=True)})
    image = plans[0]
    done = {MARKER: {"state": "complete"}, **({RUN_RECORD: run} if run is not None else {})}
    if image.pyramid.kind == "labels":  # a standalone label image (e.g. a segmentation): image-label at the root
        root.attrs.update({"ome": _label_ome(image, arrays[""], Image, ImageLabel, None), **done})
        ImageLabel.from_zarr(root)
        return
    ome = _multiscales(image, arrays[""], Image)
    ome["omero"] = _omero(image, arrays[""][-1])
    root.attrs.update({"ome": ome, **done})
    Image.from_zarr(root)


def _label_ome(plan: _Plan, arrays: list[zarr.Array], image_model: Any, label_model: Any,
               source: str | None) -> dict[str, Any]:
    """``ome`` attributes of a label image: multiscales plus validated image-label colours and class names."""
    from ome_zarr_models.v05.image_label_types import Label

    extra = {"source": {"image": source}} if source else {}
    label = Label.model_validate({**label_display(plan.pyramid), "version": "0.5", **extra})
    return {**_multiscales(plan, arrays, image_model),
            "image-label": label.model_dump(mode="json", by_alias=True, exclude_none=True)}


def _multiscales(plan: _Plan, arrays: list[zarr.Array], image_model: Any) -> dict[str, Any]:
    """The validated ``ome`` attributes (version + multiscales) of one image's arrays."""
    from ome_zarr_models.v05.axes import Axis
    from pydantic_zarr.v3 import ArraySpec

    pyr = plan.pyramid
    axes = [
        Axis(name=a, type=_AXIS_TYPES[a], unit=_UNITS.get(pyr.units.get(a, ""), pyr.units.get(a) or None))
        for a in plan.axes
    ]
    scale0 = [float(pyr.scale[pyr.axes.index(a)]) for a in plan.axes]
    trans0 = [float(pyr.translation[pyr.axes.index(a)]) for a in plan.axes]
    iy, ix = plan.axes.index("y"), plan.axes.index("x")
    scales = []
    for fy, fx in plan.factors:
        s = list(scale0)
        s[iy], s[ix] = s[iy] * fy, s[ix] * fx
        scales.append(s)
    model = image_model.new(
        array_specs=[ArraySpec.from_zarr(a) for a in arrays],
        paths=[str(k) for k in range(len(arrays))],
        axes=axes,
        scales=scales,
        translations=[trans0 if any(trans0) else None] * len(arrays),
        name=pyr.name,
        multiscale_type="mode" if pyr.kind == "labels" else "mean",
    )
    return model.attributes.ome.model_dump(mode="json", by_alias=True, exclude_none=True)


def label_display(pyr: Pyramid) -> dict[str, Any]:
    """image-label colors (0-255 RGBA) and properties (class names) for every label value that has either."""
    values = sorted(set(pyr.class_names) | set(pyr.class_colors))
    if not values:
        return {}
    out: dict[str, Any] = {}
    if pyr.class_colors:
        out["colors"] = [
            {"label-value": int(v), "rgba": [int(round(255 * c)) for c in pyr.class_colors.get(v, (0.5, 0.5, 0.5, 1.0))]}
            for v in values
        ]
    if pyr.class_names:
        out["properties"] = [{"label-value": int(v), "class": pyr.class_names.get(v, f"class {v}")} for v in values]
    return out


def _omero(plan: _Plan, coarsest: zarr.Array) -> dict[str, Any]:
    """omero channel windows: the Pyramid's contrast limits, else the data range of the coarsest level."""
    from ome_zarr_models.common.omero import Omero

    pyr = plan.pyramid
    axes = plan.axes
    n_channels = coarsest.shape[axes.index("c")] if "c" in axes else 1
    colors = _RGB_COLORS if pyr.rgb else _CHANNEL_COLORS
    dtype = np.dtype(coarsest.dtype)
    channels = []
    for i in range(n_channels):
        if pyr.contrast_limits and len(pyr.contrast_limits) > i:
            start, end = (float(v) for v in pyr.contrast_limits[i])
        else:
            sel = tuple(slice(i, i + 1) if a == "c" else slice(None) for a in axes)
            data = coarsest[sel]
            start, end = (float(data.min()), float(data.max())) if data.size else (0.0, 1.0)
        if np.issubdtype(dtype, np.integer):
            lo, hi = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        else:
            lo, hi = start, end
        channel: dict[str, Any] = {
            "color": colors[i % len(colors)],
            "window": {"min": lo, "max": hi, "start": start, "end": end},
            "active": True,
        }
        if pyr.channel_names and len(pyr.channel_names) > i:
            channel["label"] = pyr.channel_names[i]
        channels.append(channel)
    return Omero.model_validate({"channels": channels}).model_dump(mode="json", by_alias=True, exclude_none=True)
