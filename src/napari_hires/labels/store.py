"""The editable label store: an OME-Zarr label image whose level 0 is edited in windows and whose pyramid follows.

napari cannot paint multiscale Labels layers, so edits happen on a full-resolution window checked out as a plain
array; committing it writes level 0 and recomputes the covering region of every coarser level (mode downsampling),
so the store always equals a fresh build of its level 0. Each commit is recorded in a small journal file before it
starts and cleared when the pyramid is in step again, so a crash mid-commit is repaired the next time it is opened.
"""

from __future__ import annotations

import colorsys
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import dask.array as da
import numpy as np
import zarr

from napari_hires.errors import HiresError
from napari_hires.geometry import Box
from napari_hires.io.build_state import is_incomplete, is_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.pyramid_store import PyramidStore, label_display

#: Largest side in pixels of a window checked out for editing (a single-scale layer this big still displays crisply).
MAX_SIDE = 4096
#: Largest level (pixels) searched for a label value the class table lacks, before a commit holding it is refused.
SCAN_PIXELS = 16 * 2**20


def _convert_hint(path: Path) -> str:
    return (f"convert it with `napari-hires pyramid {path} OUT.zarr --kind labels` first and correct OUT.zarr")


class LabelStore:
    """An OME-Zarr label image opened read-write: level arrays, display levels, classes, checkout and commit."""

    def __init__(self, path: Path, store: PyramidStore, pyramid: Pyramid) -> None:
        self.path = path
        self.pyramid_store = store  # the level arrays, kept in step
        self.arrays = store.levels
        self.axes = store.axes
        self.pyramid = pyramid  # the read-only Pyramid from napari_hires.io (class names, colours, scale)
        self._lock = threading.Lock()
        self._held: set[int] = set()  # label values outside the class table found in the store (see _check_classes)
        self._iy, self._ix = self.axes.index("y"), self.axes.index("x")

    # ------------------------------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | os.PathLike, name: str | None = None) -> "LabelStore":
        """Open a standalone label image (e.g. a segmentation) or, with ``name``, an image's ``labels/NAME`` group."""
        from napari_hires.io.readers import open_image

        path = Path(path).expanduser()
        if name is not None:
            path = path / "labels" / name
        if not path.exists():
            raise HiresError(f"{path}: no such label store; check the path"
                             + (f" and that the image has labels named {name!r}" if name else ""))
        if not path.is_dir() or not is_zarr(path):
            raise HiresError(f"{path} is not an OME-Zarr label image, so it cannot be edited in place; "
                             + _convert_hint(path))
        group = zarr.open(str(path), mode="r+")
        if not isinstance(group, zarr.Group):
            raise HiresError(f"{path} is a plain zarr array without pyramid metadata; " + _convert_hint(path))
        attrs = group.attrs.asdict()
        ome = attrs.get("ome", attrs) if group.metadata.zarr_format == 3 else attrs
        if is_incomplete(attrs):
            raise HiresError(f"{path} is still being written (a prediction or build has not finished); wait for it "
                             "to finish, or resume it, before correcting its labels")
        if "multiscales" not in ome:
            raise HiresError(f"{path} has no OME-Zarr multiscales metadata. If a prediction or build is writing it, "
                             "wait for it to finish; otherwise " + _convert_hint(path))
        if "image-label" not in ome:
            names = _label_names(group)
            if names:
                raise HiresError(f"{path} is an image, not a label image; open one of its labels: "
                                 + ", ".join(f"{path / 'labels' / n}" for n in names))
            raise HiresError(f"{path} is an image, not a label image; " + _convert_hint(path))
        pyramid = open_image(path)  # the readers' checks: valid NGFF metadata, every level present
        ms = ome["multiscales"][0]
        axes = "".join(str(a["name"] if isinstance(a, dict) else a).lower() for a in ms.get("axes") or [])
        if not axes or set(axes) - set("tczyx") or "y" not in axes or "x" not in axes:
            raise HiresError(f"{path}: cannot tell the y and x axes of this label image (axes {axes!r}); "
                             + _convert_hint(path))
        arrays = [group[str(d["path"])] for d in ms["datasets"]]
        extra = {a: n for a, n in zip(axes, arrays[0].shape) if a not in "yx" and n != 1}
        if extra:
            raise HiresError(f"{path} has more than one plane ({extra}); only 2-D label images can be corrected")
        if not np.issubdtype(arrays[0].dtype, np.integer):
            raise HiresError(f"{path} holds {arrays[0].dtype} values; label images must hold integers. "
                             + _convert_hint(path))
        store = cls(path, PyramidStore.existing(group, arrays, axes, pyramid), pyramid)
        store._recover()
        return store

    # ------------------------------------------------------------------------------------------------ reading
    @property
    def name(self) -> str:
        return self.pyramid.name

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width of level 0 in pixels."""
        return self.arrays[0].shape[self._iy], self.arrays[0].shape[self._ix]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.arrays[0].dtype)

    @property
    def class_names(self) -> dict[int, str]:
        return dict(self.pyramid.class_names)

    @property
    def class_colors(self) -> dict[int, tuple[float, ...]]:
        return dict(self.pyramid.class_colors)

    @property
    def levels(self) -> list[da.Array]:
        """2-D dask arrays for display, under new graph names on every access so no cache serves pre-edit chunks."""
        from napari_hires.io.readers import lazy_level

        plane = tuple(slice(None) if a in "yx" else 0 for a in self.axes)
        return [lazy_level(a, f"{self.path}/{a.path}", chunk_files=True)[plane] for a in self.arrays]

    def checkout(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """A copy of level 0 over [y0, y1) x [x0, x1), to be edited and committed back."""
        box = self._check_box(Box(y0, y1, x0, x1))
        return np.asarray(self.arrays[0][self._index(box)]).reshape(box.shape)

    def window_for_view(self, center: Sequence[float], extent: Sequence[float],
                        max_side: int = MAX_SIDE) -> tuple[Box, bool]:
        """The level-0 window under a view (center and extent in level-0 pixels, y then x), at most ``max_side``
        on a side: the view's part inside the labels, or its central part when that is larger (then ``True``)."""
        h, w = self.shape
        lo = [max(0.0, c - e / 2) for c, e in zip(center, extent)]
        hi = [min(float(n), c + e / 2) for c, e, n in zip(center, extent, (h, w))]
        if any(b <= a for a, b in zip(lo, hi)):
            raise HiresError(f"the view does not show any of {self.path} ({h} x {w} pixels); "
                             "pan or zoom to the labels and try again")
        bounds, clipped = [], False
        for a, b, n in zip(lo, hi, (h, w)):
            if b - a > max_side:
                clipped = True
                mid = (a + b) / 2
                a, b = mid - max_side / 2, mid + max_side / 2
            start = max(0, math.floor(a))
            stop = min(n, math.ceil(b), start + max_side)
            bounds += [start, stop]
        return Box(*bounds), clipped

    # ------------------------------------------------------------------------------------------------ writing
    def commit(self, y0: int, x0: int, data: np.ndarray, new_classes: dict[int, str] | None = None) -> Box:
        """Write ``data`` to level 0 at (y0, x0) and recompute the covering region of every coarser level.

        Labels must be in the store's class table (or 0, unlabelled); ``new_classes`` ({value: name}) adds classes to
        it first (see :meth:`add_classes`). A store without a class table takes any label.
        """
        data = np.asarray(data)
        if data.ndim != 2:
            raise HiresError(f"labels to commit must be 2-D (y, x), got shape {data.shape}")
        box = self._check_box(Box(y0, y0 + data.shape[0], x0, x0 + data.shape[1]))
        data = self._fit_dtype(data)
        with self._lock:
            if new_classes:
                self._add_classes(new_classes)
            self._check_classes(box, data)
            self.pyramid_store.edit(box, data.reshape(self._sel_shape(box)))
        return box

    def add_classes(self, classes: dict[int, str]) -> None:
        """Add ``classes`` ({label value: name}) to the store's class table (its image-label properties), so that
        commits may use those values; naming a value that already has another name is refused."""
        with self._lock:
            self._add_classes(classes)

    def _add_classes(self, classes: dict[int, str]) -> None:
        names, info, new = self.class_names, np.iinfo(self.dtype), {}
        for value, name in classes.items():
            if not isinstance(name, str) or not name.strip():
                raise HiresError(f"class names must be non-empty text, got {name!r} for label {value}")
            if not isinstance(value, (int, np.integer)) or not info.min <= value <= info.max:
                raise HiresError(f"label {value!r} for class {name!r} must be a whole number from {info.min} to "
                                 f"{info.max} (the {self.dtype} store {self.path})")
            if names.get(int(value), name) != name:
                raise HiresError(f"label {value} is already class {names[int(value)]!r} in {self.path}; choose "
                                 f"another value for {name!r}")
            if int(value) not in names:
                new[int(value)] = name
        if not new:
            return
        colors = self.class_colors
        if colors:  # NGFF wants a colour for every named label when there are colours
            colors.update({v: _new_color(v) for v in new})
        pyramid = replace(self.pyramid, class_names={**names, **new}, class_colors=colors)
        group = zarr.open_group(str(self.path), mode="r+")
        attrs = group.attrs.asdict()
        v3 = group.metadata.zarr_format == 3
        ome = attrs.get("ome", {}) if v3 else attrs
        image_label = {**(ome.get("image-label") or {}), **label_display(pyramid.class_names, pyramid.class_colors)}
        if v3:
            group.attrs["ome"] = {**ome, "image-label": image_label}
        else:
            group.attrs["image-label"] = image_label
        self.pyramid = pyramid

    def _check_classes(self, box: Box, data: np.ndarray) -> None:
        """Refuse labels outside the class table, unless the store already holds them (one written by another tool
        may hold values its table does not name): in the region they replace, or in its levels of up to
        SCAN_PIXELS."""
        names, table = self.class_names, set(self.class_names) | set(self.class_colors)
        if not table:
            return  # no class table: any label
        outside = ~np.isin(data, sorted(table | {0} | self._held))
        if not outside.any():
            return
        values = np.unique(data[outside])
        values = values[~np.isin(values, self.checkout(*box))]
        for level in reversed(self.arrays):
            if not values.size or math.prod(level.shape) > SCAN_PIXELS:
                break
            held = np.isin(values, np.asarray(level[...]))
            self._held.update(int(v) for v in values[held])
            values = values[~held]
        if not values.size:
            return
        listed = ([] if 0 in table else ["0 unlabelled"]) + [f"{v} {names.get(v, '(no name)')}" for v in sorted(table)]
        raise HiresError(
            f"label values {', '.join(str(v) for v in values)} are not in the class table of {self.path} "
            f"({', '.join(listed)}) nor in the store; paint one of those classes, or add the class to the store first "
            f"(LabelStore.add_classes({{{values[0]}: 'name'}}), or commit(..., new_classes=...))"
        )

    def _recover(self) -> None:
        """Bring the coarser levels in step with level 0 after a commit that was interrupted (crash, kill)."""
        with self._lock:
            self.pyramid_store.recover(self._check_box)

    # ------------------------------------------------------------------------------------------------ helpers
    def _check_box(self, box: Box) -> Box:
        h, w = self.shape
        box = Box(*(int(v) for v in box))
        if not (0 <= box.y0 < box.y1 <= h and 0 <= box.x0 < box.x1 <= w):
            raise HiresError(f"window {box} is empty or outside the labels of {self.path} ({h} x {w} pixels)")
        return box

    def _fit_dtype(self, data: np.ndarray) -> np.ndarray:
        if data.dtype == self.dtype:
            return data
        if data.dtype != bool and not np.issubdtype(data.dtype, np.integer):
            raise HiresError(f"labels to commit must be integers, got {data.dtype}")
        info = np.iinfo(self.dtype)
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        if lo < info.min or hi > info.max:
            raise HiresError(f"label values {lo}..{hi} do not fit the {self.dtype} store {self.path} "
                             f"(at most {info.max}); use labels up to {info.max}")
        return data.astype(self.dtype)

    def _index(self, box: Box) -> tuple[slice, ...]:
        return box.index(self.axes, rest=slice(0, 1))

    def _sel_shape(self, box: Box) -> tuple[int, ...]:
        return tuple({"y": box.shape[0], "x": box.shape[1]}.get(a, 1) for a in self.axes)


def _new_color(value: int) -> tuple[float, float, float, float]:
    """A colour for a class added to a store: hues spread by the golden ratio, so neighbouring labels differ."""
    return (*colorsys.hsv_to_rgb((value * 0.618034) % 1.0, 0.7, 0.95), 1.0)


def _label_names(group: zarr.Group) -> list[str]:
    """Names listed in an image's ``labels`` group, if any."""
    labels = group.get("labels")
    if not isinstance(labels, zarr.Group):
        return []
    attrs = labels.attrs.asdict()
    return [str(n) for n in attrs.get("ome", attrs).get("labels", [])]


def _changed_box(before: np.ndarray, after: np.ndarray) -> Box | None:
    """Bounding box of the pixels that differ between two arrays of the same shape, or None."""
    rows = np.flatnonzero((before != after).any(axis=1))
    if not rows.size:
        return None
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero((before[y0:y1] != after[y0:y1]).any(axis=0))
    return Box(y0, y1, int(cols[0]), int(cols[-1]) + 1)


class EditSession:
    """A checked-out window being edited: saves each change to the store in order, on one background thread.

    The caller keeps ``data`` (e.g. as a napari Labels layer) and calls :meth:`save` after every stroke; only the
    bounding box of what changed since the last save is written, so a crash loses at most the stroke in flight.
    """

    def __init__(self, store: LabelStore, window: Box) -> None:
        self.store = store
        self.window = window
        self.original = store.checkout(*window)
        self.data = self.original.copy()
        self._saved = self.original.copy()  # what the store holds (or will once queued writes land)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-hires-label-commit")
        self._failed = False

    def save(self, data: np.ndarray) -> Future[Box] | None:
        """Queue the write of what changed in ``data`` since the last save; None when nothing changed."""
        if self._failed:
            self._failed = False
            return self._submit(Box(0, data.shape[0], 0, data.shape[1]), data)
        box = _changed_box(self._saved, data)
        return None if box is None else self._submit(box, data)

    def commit(self, data: np.ndarray) -> Future[Box]:
        """Queue the write of the whole window (whatever earlier saves did)."""
        return self._submit(Box(0, data.shape[0], 0, data.shape[1]), data)

    def revert(self) -> Future[Box] | None:
        """Queue writing back the window as it was checked out, undoing every saved edit; ``data`` follows."""
        self.data[...] = self.original
        return self.save(self.data)

    def close(self, wait: bool = True) -> None:
        """Stop taking writes; queued ones still land (``wait`` for them, or let them finish in the background)."""
        self._writer.shutdown(wait=wait)

    def _submit(self, box: Box, data: np.ndarray) -> Future[Box]:
        if data.shape != self.original.shape:
            raise HiresError(f"edited labels have shape {data.shape}, the checked-out window {self.original.shape}")
        patch = np.array(data[box.slices], copy=True)
        self._saved[box.slices] = patch
        return self._writer.submit(self._write, box, patch)

    def _write(self, box: Box, patch: np.ndarray) -> Box:
        try:
            return self.store.commit(self.window.y0 + box.y0, self.window.x0 + box.x0, patch)
        except BaseException:
            self._failed = True  # the store may lag behind _saved: the next save rewrites the whole window
            raise
