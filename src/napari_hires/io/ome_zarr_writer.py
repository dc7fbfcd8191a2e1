"""Write a Pyramid (and label Pyramids) as an OME-Zarr 0.5 store, block by block, NGFF metadata last.

Layout: arrays ``0, 1, ...`` in the root group, label images under ``labels/NAME``; axes in NGFF order (t, c, z, y, x),
zstd-compressed chunks of ``chunk`` pixels in y and x, optionally inside shards of ``shard`` pixels. Each image is a
:class:`~napari_hires.io.pyramid_store.PyramidStore` (created or reopened, levels derived, completion marked there);
this module copies the source's pixels into it. Each write task owns one block (a whole shard, or a run of whole
chunks) so no two tasks touch the same stored object. Memory is bounded by ``MAX_IN_FLIGHT`` blocks whatever the
image size.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zarr

from napari_hires.errors import HiresError, OutputExistsError
from napari_hires.io.output_path import check_output
from napari_hires.io.progress import Progress, ticker
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.pyramid_store import (
    BLOCK_SIDE, MAX_IN_FLIGHT, WORKERS, Layout, PyramidStore, block_slices, check_layout, open_root, plan_layout,
    run_bounded,
)
from napari_hires.io.region_reader import RegionReader

__all__ = ["BLOCK_SIDE", "MAX_IN_FLIGHT", "OmeZarrWriter", "add_labels", "write_ome_zarr"]


# ---------------------------------------------------------------------------------------------------- public


def write_ome_zarr(image: Pyramid, out: str | os.PathLike, *, progress: Progress = False, **options: Any) -> str:
    """Write image (and label images under labels/NAME) as an OME-Zarr 0.5 (zarr v3) store, block by block, and
    finish it; ``options`` are :class:`OmeZarrWriter`'s (``labels``, ``chunk``, ``shard``, ``derive_levels``,
    ``overwrite``, ``min_size``). Returns the output path."""
    writer = OmeZarrWriter(image, out, **options)
    writer.write(progress=progress)
    writer.finish()
    return str(writer.out)


class OmeZarrWriter:
    """A store being written: arrays created up front, levels filled block by block, NGFF metadata written last.

    ``run`` identifies the job that writes the store (e.g. a prediction's inputs, their content and settings). A
    store left unfinished by the same ``run`` is reopened instead of refused, so that a killed job can resume (the
    caller decides which level-0 blocks are still to do, see :mod:`napari_hires.engine`), and one it completed is
    reopened read-only as ``complete``; a store of another run is refused naming what differs. The output is
    checked (:mod:`napari_hires.io.output_path`) before anything is written. With ``derive_levels`` only level 0
    of each Pyramid is read and coarser levels are computed from the written level above (mean for images, mode for
    labels) until y and x are both <= ``min_size``; otherwise every level is written as given.
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
        check_layout(chunk, shard, min_size)
        self.labels = labels or {}
        self.derive = derive_levels
        layout = _layout(image, chunk, shard, derive_levels, min_size, None)
        n_levels = len(layout.shapes) if derive_levels else None
        plans = [("", image, layout)]
        for name, label in self.labels.items():
            _check_name(name)
            plans.append((f"labels/{name}", label, _layout(label, chunk, shard, derive_levels, min_size, n_levels)))
        #: ``resumed``: an unfinished store of the same run, reopened; ``complete``: the same run already finished
        #: it. ``overwrite`` always starts again, as it says ("replace instead of resuming or refusing").
        self.root, state = open_root(self.out, run=run, overwrite=overwrite, inputs=[p[1].source for p in plans])
        self.stores = [PyramidStore.of(pyr, self.root, path, lay, state, run) for path, pyr, lay in plans]
        self.sources = [pyr for _, pyr, _ in plans]
        self.resumed, self.complete = state == "resumed", state == "complete"

    def write(self, progress: Progress = False, *, first: int = 0) -> None:
        """Fill every level from ``first`` on from its source (the caller has written the levels before it)."""
        _write_all(list(zip(self.stores, self.sources)), self.derive, progress, f"writing {self.out.name}", first)

    def finish(self) -> None:
        """Write and validate the NGFF metadata, which marks the store complete (keeping the run record, so that a
        rerun of the same job recognises the store as its own, finished)."""
        self.stores[0].finish(self.stores[1:])


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

    from ome_zarr_models.v05 import ImageLabel
    from ome_zarr_models.v05.labels import LabelsAttrs

    from napari_hires.io.readers import open_image

    out = Path(image)
    _check_name(name)
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
    layout = _layout(labels, chunk, None, True, 1, len(target.levels))
    group = root.require_group("labels")
    listed = [n for n in group.attrs.get("ome", {}).get("labels", []) if n != name]
    if name in group:
        if not overwrite:
            raise OutputExistsError(f"{out} already has labels/{name}; pass --overwrite (overwrite=True) to replace "
                                    "it, or choose another name")
        group.attrs.update({"ome": LabelsAttrs(labels=listed, version="0.5").model_dump(mode="json", by_alias=True)})
        del group[name]
    try:
        store = PyramidStore.of(labels, root, f"labels/{name}", layout)
        _write_all([(store, labels)], True, progress, f"writing {out.name}/labels/{name}")
        store.group.attrs.update({"ome": store.label_ome("../../")})
        ImageLabel.from_zarr(store.group)
    except BaseException:
        if name in group:
            del group[name]
        raise
    attrs = LabelsAttrs(labels=[*listed, name], version="0.5")
    group.attrs.update({"ome": attrs.model_dump(mode="json", by_alias=True, exclude_none=True)})
    return str(out / "labels" / name)


# ---------------------------------------------------------------------------------------------------- writing


def _layout(pyr: Pyramid, chunk: int, shard: int | None, derive: bool, min_size: int,
            n_levels: int | None) -> Layout:
    """The stored layout of one Pyramid: its own levels' shapes, or (``derive``) level 0 and halvings of it."""
    return plan_layout(pyr.levels[0].shape, pyr.axes, pyr.dtype, kind=pyr.kind, rgb=pyr.rgb, name=pyr.name,
                       chunk=chunk, shard=shard, min_size=min_size, n_levels=n_levels,
                       level_shapes=None if derive else [lv.shape for lv in pyr.levels])


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise HiresError(f"label image name {name!r} is not a valid group name; use letters, digits, '-' or '_'")


def _write_all(pairs: list[tuple[PyramidStore, Pyramid]], derive: bool, progress: Progress, desc: str,
               first: int = 0) -> None:
    """Fill the levels from ``first`` on of each store from its Pyramid, block by block on one pool of threads."""
    tick, close = ticker(progress, sum(store.layout.n_blocks(first) for store, _ in pairs), desc)
    try:
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="ome-zarr-writer") as pool:
            for store, source in pairs:
                for k in range(first, 1 if derive else len(store.levels)):
                    reader, level = RegionReader(source.levels[k]), store.levels[k]
                    run_bounded(pool, (_copy_task(reader, source.axes, store.axes, level, sel)
                                       for sel in block_slices(level.shape, store.layout.blocks[k])), tick)
                if derive:
                    store.derive(first, pool, tick)
    finally:
        close()


def _copy_task(source: RegionReader, src_axes: str, axes: str, arr: zarr.Array,
               sel: tuple[slice, ...]) -> Callable[[], None]:
    """Compute one block of a dask level (in its own axis order) and store it in NGFF order."""
    src_sel = tuple(sel[axes.index(a)] for a in src_axes)
    perm = [src_axes.index(a) for a in axes]

    def run() -> None:
        arr[sel] = np.transpose(source.read(src_sel), perm).astype(arr.dtype, copy=False)

    return run
