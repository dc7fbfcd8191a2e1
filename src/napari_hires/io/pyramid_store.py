"""The one read-write pyramid store: an image or label image of an OME-Zarr 0.5 store, its level arrays kept in step.

Every writer goes through it: the engine's prediction store, the pyramid builder and export (through
:mod:`napari_hires.io.ome_zarr_writer`) and the editable label store. A store is created (or reopened by the same
job, see :func:`open_root`), written box by box at level 0 while :func:`update_levels`, the one routine that
recomputes coarser levels (mean for images, mode for labels), keeps every coarser level in step, and finished by its
NGFF metadata, which is also its completion marker: the root carries ``{"napari_hires": {"state": "writing"}}``
until then, so a killed run leaves a store that readers recognise as incomplete. A journal records the finished
level-0 blocks of a resumable job.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from napari_hires.errors import HiresError, OutputExistsError
from napari_hires.geometry import Box
from napari_hires.io.build_state import MARKER, RUN_RECORD, store_marker
from napari_hires.io.downsample import downsample_mean, downsample_mode
from napari_hires.io.job_identity import describe_difference
from napari_hires.io.output_path import check_output, check_writable, prepare_output
from napari_hires.io.pyramid import Pyramid, is_rgb

#: Threads that compute and write blocks, and how many blocks may be read, computed or written at once.
WORKERS = max(2, min(4, os.cpu_count() or 2))
MAX_IN_FLIGHT = 2 * WORKERS
#: Side in pixels of an unsharded write block (rounded to whole chunks): big enough to amortise task overhead.
BLOCK_SIDE = 1024
NGFF_ORDER = "tczyx"
#: Array (in the root group) of one byte per level-0 block of a resumable job, set once the block is written.
JOURNAL = "napari_hires_journal/blocks"
#: File in an image's directory naming the level-0 box of an in-place edit in progress (absent when in step).
EDIT_JOURNAL = "napari_hires_edit.json"
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_UNITS = {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter", "m": "meter",
          "s": "second", "ms": "millisecond"}
_CHANNEL_COLORS = ["FFFFFF", "00FF00", "FF00FF", "00FFFF", "FF0000", "0000FF", "FFFF00"]
_RGB_COLORS = ["FF0000", "00FF00", "0000FF", "FFFFFF"]


# ---------------------------------------------------------------------------------------------------- levels


def update_levels(levels: Sequence[zarr.Array], y0: int, y1: int, x0: int, x1: int, *, axes: str, labels: bool,
                  data: np.ndarray | None = None, index: Sequence[slice] | None = None,
                  strip: int | None = None) -> list[Box]:
    """After ``levels[0]`` changed in [y0, y1) x [x0, x1), rewrite the covering region of levels 1, 2, ...

    Each level is recomputed from the level above (mode for labels, mean for images), over the region widened to
    whole 2 x 2 cells, so the result equals building the pyramid from scratch. ``data`` (what was just written
    there) spares reading it back while a level's source is exactly the region in memory; ``index`` limits the
    other axes (a full index in ``axes`` order, y and x ignored); ``strip`` bounds memory by computing that many
    rows of a level at a time from what is read. Returns the rewritten box per level.
    """
    kernel = downsample_mode if labels else downsample_mean
    iy, ix = axes.index("y"), axes.index("x")
    rest = tuple(index) if index is not None else (slice(None),) * len(axes)
    held = (y0, x0)  # where ``data`` starts in the level above
    boxes = []
    for above, level in zip(levels[:-1], levels[1:]):
        sy0, sx0 = 2 * (y0 // 2), 2 * (x0 // 2)
        y0, x0 = y0 // 2, x0 // 2
        y1, x1 = min(math.ceil(y1 / 2), level.shape[iy]), min(math.ceil(x1 / 2), level.shape[ix])
        src = Box(sy0, min(2 * y1, above.shape[iy]), sx0, min(2 * x1, above.shape[ix]))
        dst = _index(Box(y0, y1, x0, x1), axes, rest)
        if data is not None and held == (sy0, sx0) and (data.shape[iy], data.shape[ix]) == src.shape:
            data = kernel(data, 2, axes)
        elif strip is None:
            data = kernel(above[_index(src, axes, rest)], 2, axes)
        else:
            data = np.empty(tuple(len(range(*s.indices(n))) for s, n in zip(dst, level.shape)), dtype=level.dtype)
            for ys in range(y0, y1, strip):
                ye = min(ys + strip, y1)
                rows = _index(src._replace(y0=2 * ys, y1=min(2 * ye, above.shape[iy])), axes, rest)
                data[Box(ys - y0, ye - y0, 0, x1 - x0).index(axes)] = kernel(above[rows], 2, axes)
        level[dst] = data
        held = (y0, x0)
        boxes.append(Box(y0, y1, x0, x1))
    return boxes


def _index(box: Box, axes: str, rest: Sequence[slice]) -> tuple[slice, ...]:
    """An index of a level with ``axes``: ``box`` in y and x, ``rest`` (a full index) along the other axes."""
    return tuple(slice(box.y0, box.y1) if a == "y" else slice(box.x0, box.x1) if a == "x" else r
                 for a, r in zip(axes, rest))


def _nothing() -> None:
    """A progress tick that reports nowhere."""


# ---------------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """How one image is stored: NGFF axes, and per level its shape, (y, x) downsampling, chunks and shards."""

    axes: str  # NGFF order
    shapes: list[tuple[int, ...]]
    factors: list[tuple[float, float]]  # (y, x) downsampling of each level relative to level 0
    chunks: list[tuple[int, ...]]
    shards: list[tuple[int, ...] | None]
    dtype: np.dtype

    @property
    def blocks(self) -> list[tuple[int, ...]]:
        """Write-block shape of each level: a shard, or whole chunks up to about BLOCK_SIDE in y and x."""
        out = []
        for chunks, shards in zip(self.chunks, self.shards):
            if shards is not None:
                out.append(shards)
                continue
            out.append(tuple(max(c, BLOCK_SIDE // c * c) if a in "yx" else c for a, c in zip(self.axes, chunks)))
        return out

    def n_blocks(self, first: int = 0) -> int:
        return sum(math.prod(math.ceil(n / b) for n, b in zip(shape, block))
                   for shape, block in list(zip(self.shapes, self.blocks))[first:])


def check_layout(chunk: int, shard: int | None, min_size: int) -> None:
    """Refuse a chunk, shard or smallest level side that no store can have, with what to pick instead."""
    if chunk < 1:
        raise HiresError(f"chunk must be a positive number of pixels, got {chunk}")
    if shard is not None and (shard < chunk or shard % chunk):
        raise HiresError(f"shard {shard} must be a multiple of chunk {chunk}; pick e.g. --shard {4 * chunk}")
    if min_size < 1:
        raise HiresError(f"min_size must be a positive number of pixels, got {min_size}")


def plan_layout(shape: Sequence[int], axes: str, dtype: Any, *, kind: str, rgb: bool, name: str, chunk: int,
                shard: int | None = None, min_size: int = 256, n_levels: int | None = None,
                level_shapes: Sequence[Sequence[int]] | None = None) -> Layout:
    """The layout of an image of level-0 ``shape`` in ``axes``: coarser levels halve y and x until both are
    <= ``min_size`` (or ``n_levels`` levels), unless ``level_shapes`` gives every level's shape (the source's)."""
    unknown = set(axes) - set(NGFF_ORDER)
    if unknown or len(set(axes)) != len(axes):
        raise HiresError(f"{name}: axes {axes!r} cannot be written to OME-Zarr; use the letters t, c, z, y, x once each")
    ngff = "".join(a for a in NGFF_ORDER if a in axes)
    dtype = _store_dtype(dtype, kind, name)
    iy, ix = ngff.index("y"), ngff.index("x")
    if level_shapes is None:
        shapes = [_to_ngff(shape, axes, ngff)]
        while (n_levels is None and max(shapes[-1][iy], shapes[-1][ix]) > min_size) or (
            n_levels is not None and len(shapes) < n_levels
        ):
            prev = list(shapes[-1])
            prev[iy], prev[ix] = math.ceil(prev[iy] / 2), math.ceil(prev[ix] / 2)
            shapes.append(tuple(prev))
        factors = [(2.0**k, 2.0**k) for k in range(len(shapes))]
    else:
        shapes = [_to_ngff(s, axes, ngff) for s in level_shapes]
        factors = [(_level_factor(shapes[0][iy], s[iy]), _level_factor(shapes[0][ix], s[ix])) for s in shapes]
    # Chunks hold one t, z and c each (channels are shown and read one layer at a time), except RGB(A) samples,
    # which are always displayed together: one chunk then holds all of them, so a tile costs one read.
    chunks, shards = [], []
    for level in shapes:
        c = tuple(min(chunk, n) if a in "yx" else (n if a == "c" and rgb else 1) for a, n in zip(ngff, level))
        chunks.append(c)
        shards.append(None if shard is None else tuple(
            min(shard, math.ceil(n / ci) * ci) if a in "yx" else ci for a, n, ci in zip(ngff, level, c)))
    return Layout(ngff, shapes, factors, chunks, shards, dtype)


def _to_ngff(shape: Sequence[int], src_axes: str, axes: str) -> tuple[int, ...]:
    return tuple(int(shape[src_axes.index(a)]) for a in axes)


def _level_factor(n0: int, n: int) -> float:
    """Downsampling factor of a provided level: the nearest power of two when within 5 %, else the exact ratio."""
    ratio = n0 / n
    power = 2.0 ** round(math.log2(ratio))
    return power if abs(ratio / power - 1) < 0.05 else ratio


def _store_dtype(dtype: Any, kind: str, name: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if kind != "labels":
        return dtype
    if dtype == bool:
        return np.dtype(np.uint8)
    if not np.issubdtype(dtype, np.integer):
        raise HiresError(f"label image {name!r} has dtype {dtype}; label images must hold integers")
    return dtype


# ---------------------------------------------------------------------------------------------------- the store


def open_root(out: str | os.PathLike, *, run: dict[str, Any] | None, overwrite: bool,
              inputs: Sequence[str | os.PathLike | None] = ()) -> tuple[zarr.Group, str]:
    """The root group of a store about to be written, and its state: "new" (created, marked as being written),
    "resumed" (an unfinished store of the same ``run``, reopened) or "complete" (the same run finished it: read-only).

    A store of another run is refused naming what differs; ``overwrite`` always starts again. The output is checked
    (:mod:`napari_hires.io.output_path`: never one of ``inputs``, never data napari-hires did not write) first.
    """
    out = Path(out)
    check_output(out, inputs)
    recorded = _recorded(out)
    if not overwrite and run is not None and recorded is not None and recorded[1] == run:
        state = "resumed" if recorded[0] == "writing" else "complete"
        return zarr.open_group(str(out), mode="r" if state == "complete" else "r+"), state
    if run is not None and recorded is not None and recorded[1] is not None and not overwrite:
        done = "a complete store" if recorded[0] == "complete" else "an unfinished store"
        raise OutputExistsError(f"{out} already exists, {done} of another job: "
                                f"{describe_difference(recorded[1], run)}; pass --overwrite (overwrite=True) to "
                                "start again, or choose another output path")
    check_writable(out)
    prepare_output(out, overwrite)
    marker = {"state": "writing", **({"run": run} if run is not None else {})}
    return zarr.open_group(str(out), mode="w-", zarr_format=3, attributes={MARKER: marker}), "new"


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


def _described(pyramid: Pyramid) -> dict[str, Any]:
    """What ``pyramid`` says besides its levels, as :attr:`PyramidStore.meta`."""
    return {f.name: getattr(pyramid, f.name) for f in fields(Pyramid) if f.name != "levels"}


def read_journal(out: str | os.PathLike) -> np.ndarray | None:
    """The block journal of an unfinished store at ``out`` (one byte per level-0 block, set once it is written);
    None when there is none to resume (no store, a finished one, another tool's, or an unreadable one)."""
    found = store_marker(out)
    if found is None or found[0].get("state") != "writing":
        return None
    try:
        root = zarr.open_group(str(out), mode="r")
        return root[JOURNAL][...] if JOURNAL in root else None
    except Exception:  # unreadable: nothing to resume
        return None


@dataclass
class PyramidStore:
    """One image or label image in a zarr group: its level arrays (NGFF axis order), layout and description.

    ``meta`` holds what a :class:`Pyramid` says besides its levels (axes in the caller's order, name, kind, scale,
    translation, units, channel and class names, colours, contrast limits); :attr:`pyramid` reads the store as one.
    """

    group: zarr.Group
    layout: Layout
    levels: list[zarr.Array]
    meta: dict[str, Any]
    rgb: bool = False
    state: str = "new"  # "new", "resumed" or "complete" (see open_root)
    run: dict[str, Any] | None = None  # the job's record, kept in the finished store
    _shared: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def create(cls, out: str | os.PathLike, *, shape: Sequence[int], dtype: Any, axes: str = "yx",
               kind: str = "image", chunk: int = 512, shard: int | None = None, min_size: int = 256,
               overwrite: bool = False, run: dict[str, Any] | None = None, **meta: Any) -> "PyramidStore":
        """Create the store at ``out`` (or reopen it for the same ``run``, see :func:`open_root`) with every level's
        array; ``meta`` are :class:`Pyramid` fields (name, scale, translation per axis of ``axes``, class names...)."""
        check_layout(chunk, shard, min_size)
        meta = {"axes": axes, "kind": kind, **meta}
        rgb = is_rgb(kind, axes, shape, dtype)
        layout = plan_layout(shape, axes, dtype, kind=kind, rgb=rgb, name=meta.get("name", "image"), chunk=chunk,
                             shard=shard, min_size=min_size)
        root, state = open_root(out, run=run, overwrite=overwrite)
        return cls.create_in(root, "", layout, meta, rgb=rgb, state=state, run=run)

    @classmethod
    def create_in(cls, root: zarr.Group, path: str, layout: Layout, meta: dict[str, Any], *, rgb: bool = False,
                  state: str = "new", run: dict[str, Any] | None = None) -> "PyramidStore":
        """The image at group ``path`` of ``root`` (created, or for a resumed or complete ``state`` reopened and
        checked against ``layout``: a mismatch means another job wrote it)."""
        if state == "new":
            group = root.require_group(path) if path else root
            levels = [
                group.create_array(str(k), shape=shape, dtype=layout.dtype, chunks=chunks, shards=shards,
                                   compressors=ZstdCodec(level=3), fill_value=0, dimension_names=tuple(layout.axes))
                for k, (shape, chunks, shards) in enumerate(zip(layout.shapes, layout.chunks, layout.shards))
            ]
        else:
            group = root[path] if path else root
            levels = [group[str(k)] for k in range(len(layout.shapes))]
            if any(a.shape != s or a.dtype != layout.dtype for a, s in zip(levels, layout.shapes)):
                raise OutputExistsError(f"{root.store} holds arrays of another shape or type; pass overwrite to "
                                        "replace it")
        return cls(group, layout, levels, meta, rgb, state, run)

    @classmethod
    def of(cls, pyramid: Pyramid, root: zarr.Group, path: str, layout: Layout, state: str = "new",
           run: dict[str, Any] | None = None) -> "PyramidStore":
        """The store of ``pyramid`` (its description, not its pixels) at group ``path`` of ``root``."""
        return cls.create_in(root, path, layout, _described(pyramid), rgb=pyramid.rgb, state=state, run=run)

    @classmethod
    def existing(cls, group: zarr.Group, levels: list[zarr.Array], axes: str, pyramid: Pyramid) -> "PyramidStore":
        """The finished store of an image or label image (any zarr format) opened read-write: its ``levels`` in
        stored ``axes`` order, described by its reader's ``pyramid``."""
        iy, ix = axes.index("y"), axes.index("x")
        shapes = [tuple(a.shape) for a in levels]
        layout = Layout(axes, shapes, [(shapes[0][iy] / s[iy], shapes[0][ix] / s[ix]) for s in shapes],
                        [tuple(a.chunks) for a in levels], [getattr(a, "shards", None) for a in levels],
                        np.dtype(levels[0].dtype))
        return cls(group, layout, levels, {**_described(pyramid), "axes": axes}, pyramid.rgb, "complete")

    # ------------------------------------------------------------------------------------------------ reading
    @property
    def axes(self) -> str:
        """The stored (NGFF) axis order of :attr:`levels`."""
        return self.layout.axes

    @property
    def folder(self) -> Path:
        """The image's directory on disk."""
        return Path(self.group.store.root) / self.group.path

    @property
    def labels(self) -> bool:
        return self.meta["kind"] == "labels"

    @property
    def resumed(self) -> bool:
        return self.state == "resumed"

    @property
    def complete(self) -> bool:
        return self.state == "complete"

    @property
    def pyramid(self) -> Pyramid:
        """The stored levels as a lazy :class:`Pyramid` in the caller's axis order (read live: new blocks show)."""
        import dask.array as da

        order = [self.axes.index(a) for a in self.meta["axes"]]
        return Pyramid(levels=[da.from_zarr(a).transpose(order) for a in self.levels], **self.meta)

    # ------------------------------------------------------------------------------------------------ writing
    def write(self, box: Box, data: np.ndarray, *, last: int | None = None) -> None:
        """Write ``data`` (in :attr:`axes` order) at ``box`` of level 0 and the covering region of the coarser levels
        up to ``last`` (all by default) from memory; safe across threads when those levels' chunks lie under ``box``
        alone."""
        levels = self.levels if last is None else self.levels[:last + 1]
        levels[0][box.index(self.axes)] = data
        update_levels(levels, *box, axes=self.axes, labels=self.labels, data=data)

    def update_levels(self, box: Box, first: int = 0) -> list[Box]:
        """Recompute every level coarser than ``first`` over ``box`` of level ``first``, one caller at a time (their
        chunks may span boxes)."""
        with self._shared:
            return update_levels(self.levels[first:], *box, axes=self.axes, labels=self.labels)

    def edit(self, box: Box, data: np.ndarray) -> None:
        """Write ``data`` at ``box`` of a finished store in place, every level in step: the box is recorded in the
        edit journal first and cleared once the levels follow, so that an edit cut short is repaired by
        :meth:`recover` (a crash loses at most that edit's coarser levels, never their agreement with level 0)."""
        with self._shared:
            self.begin_edit(box)
            self.write(box, data)
            (self.folder / EDIT_JOURNAL).unlink()

    def begin_edit(self, box: Box) -> None:
        """Record in the edit journal (atomically) that ``box`` of level 0 is about to change."""
        tmp = self.folder / f".{EDIT_JOURNAL}.tmp"
        tmp.write_text(json.dumps({"pending": list(box)}))
        os.replace(tmp, self.folder / EDIT_JOURNAL)

    def recover(self, check: Callable[[Box], Box]) -> None:
        """Bring the coarser levels in step after an edit cut short (crash, kill): over its journalled box, or over
        the whole image when the journal is unreadable or ``check`` refuses its box."""
        journal = self.folder / EDIT_JOURNAL
        if not journal.is_file():
            return
        try:
            box = check(Box(*(int(v) for v in json.loads(journal.read_text())["pending"])))
        except (ValueError, KeyError, TypeError, HiresError):
            shape = self.levels[0].shape
            box = Box(0, shape[self.axes.index("y")], 0, shape[self.axes.index("x")])
        self.update_levels(box)
        journal.unlink()

    def journal(self, shape: tuple[int, int]) -> zarr.Array:
        """The job's journal of finished level-0 blocks (``shape`` = blocks in y and x): kept when the store was
        reopened, else created empty."""
        if self.state != "new" and JOURNAL in self.group:
            return self.group[JOURNAL]
        group, name = JOURNAL.split("/")
        return self.group.require_group(group).create_array(
            name, shape=shape, chunks=(1, 1), dtype=np.uint8, fill_value=0, overwrite=True)

    def derive(self, first: int = 1, pool: ThreadPoolExecutor | None = None, tick: Callable[[], None] = _nothing
               ) -> None:
        """Compute levels ``first``, ``first + 1``... block by block (on ``pool``, else a pool of its own), each
        block from the written level above, a strip of rows at a time."""
        if pool is None:
            with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="pyramid-store") as own:
                return self.derive(first, own, tick)
        iy, ix = self.axes.index("y"), self.axes.index("x")
        for k in range(max(first, 1), len(self.levels)):
            above, strip = self.levels[k - 1], self.layout.chunks[k][iy]
            tasks = (partial(update_levels, self.levels[k - 1:k + 1], 2 * sel[iy].start,
                             min(2 * sel[iy].stop, above.shape[iy]), 2 * sel[ix].start,
                             min(2 * sel[ix].stop, above.shape[ix]), axes=self.axes, labels=self.labels,
                             index=sel, strip=strip)
                     for sel in block_slices(self.levels[k].shape, self.layout.blocks[k]))
            run_bounded(pool, tasks, tick)

    def finish(self, labels: Sequence["PyramidStore"] = ()) -> None:
        """Write and validate the NGFF metadata (``labels``, the label images under ``labels/``, first; this root
        image last), which marks the store complete and keeps the run record, so that a rerun of the same job
        recognises the store as its own, finished."""
        from ome_zarr_models.v05 import Image, ImageLabel
        from ome_zarr_models.v05.labels import LabelsAttrs

        if self.complete:
            return
        for label in labels:
            label.group.attrs.update({"ome": label.label_ome("../../")})
            ImageLabel.from_zarr(label.group)
        if labels:
            listed = LabelsAttrs(labels=[label.group.basename for label in labels], version="0.5")
            self.group["labels"].attrs.update({"ome": listed.model_dump(mode="json", by_alias=True,
                                                                        exclude_none=True)})
        done = {MARKER: {"state": "complete"}, **({RUN_RECORD: self.run} if self.run is not None else {})}
        if self.labels:  # a standalone label image (e.g. a segmentation): image-label at the root
            self.group.attrs.update({"ome": self.label_ome(None), **done})
            ImageLabel.from_zarr(self.group)
            return
        self.group.attrs.update({"ome": {**self._multiscales(), "omero": self._omero()}, **done})
        Image.from_zarr(self.group)

    # ------------------------------------------------------------------------------------------------ metadata
    def label_ome(self, source: str | None) -> dict[str, Any]:
        """``ome`` attributes of a label image: multiscales plus validated image-label colours and class names
        (``source``: the path from it to the image it labels, if any)."""
        from ome_zarr_models.v05.image_label_types import Label

        extra = {"source": {"image": source}} if source else {}
        display = label_display(self.meta.get("class_names") or {}, self.meta.get("class_colors") or {})
        label = Label.model_validate({**display, "version": "0.5", **extra})
        return {**self._multiscales(), "image-label": label.model_dump(mode="json", by_alias=True, exclude_none=True)}

    def _multiscales(self) -> dict[str, Any]:
        """The validated ``ome`` attributes (version + multiscales) of the level arrays."""
        from ome_zarr_models.v05 import Image
        from ome_zarr_models.v05.axes import Axis
        from pydantic_zarr.v3 import ArraySpec

        m, src = self.meta, self.meta["axes"]
        units = m.get("units") or {}
        axes = [Axis(name=a, type=_AXIS_TYPES[a], unit=_UNITS.get(units.get(a, ""), units.get(a) or None))
                for a in self.axes]
        scale0 = [float(m["scale"][src.index(a)]) for a in self.axes]
        trans0 = [float(m["translation"][src.index(a)]) for a in self.axes]
        iy, ix = self.axes.index("y"), self.axes.index("x")
        scales = []
        for fy, fx in self.layout.factors:
            s = list(scale0)
            s[iy], s[ix] = s[iy] * fy, s[ix] * fx
            scales.append(s)
        model = Image.new(
            array_specs=[ArraySpec.from_zarr(a) for a in self.levels],
            paths=[str(k) for k in range(len(self.levels))],
            axes=axes,
            scales=scales,
            translations=[trans0 if any(trans0) else None] * len(self.levels),
            name=m.get("name", "image"),
            multiscale_type="mode" if self.labels else "mean",
        )
        return model.attributes.ome.model_dump(mode="json", by_alias=True, exclude_none=True)

    def _omero(self) -> dict[str, Any]:
        """omero channel windows: the given contrast limits, else the data range of the coarsest level."""
        from ome_zarr_models.common.omero import Omero

        coarsest, axes = self.levels[-1], self.axes
        limits, names = self.meta.get("contrast_limits"), self.meta.get("channel_names")
        n_channels = coarsest.shape[axes.index("c")] if "c" in axes else 1
        colors = _RGB_COLORS if self.rgb else _CHANNEL_COLORS
        dtype = np.dtype(coarsest.dtype)
        channels = []
        for i in range(n_channels):
            if limits and len(limits) > i:
                start, end = (float(v) for v in limits[i])
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
            if names and len(names) > i:
                channel["label"] = names[i]
            channels.append(channel)
        return Omero.model_validate({"channels": channels}).model_dump(mode="json", by_alias=True, exclude_none=True)


def label_display(class_names: dict[int, str], class_colors: dict[int, Any]) -> dict[str, Any]:
    """image-label colors (0-255 RGBA) and properties (class names) for every label value that has either."""
    values = sorted(set(class_names) | set(class_colors))
    if not values:
        return {}
    out: dict[str, Any] = {}
    if class_colors:
        out["colors"] = [
            {"label-value": int(v), "rgba": [int(round(255 * c)) for c in class_colors.get(v, (0.5, 0.5, 0.5, 1.0))]}
            for v in values
        ]
    if class_names:
        out["properties"] = [{"label-value": int(v), "class": class_names.get(v, f"class {v}")} for v in values]
    return out


# ---------------------------------------------------------------------------------------------------- blocks


def block_slices(shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """Index of every block of ``block`` shape tiling an array of ``shape``, in row-major order."""
    ranges = [range(0, n, b) for n, b in zip(shape, block)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(s, min(s + b, n)) for s, b, n in zip(starts, block, shape))


def run_bounded(pool: ThreadPoolExecutor, tasks: Iterator[Callable[[], Any]], tick: Callable[[], None]) -> None:
    """Run tasks on the pool with at most MAX_IN_FLIGHT submitted at a time; the first error stops the rest."""
    in_flight: set[Future[Any]] = set()

    def drain(done: set[Future[Any]]) -> None:
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
