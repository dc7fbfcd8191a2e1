"""The prediction store: OME-Zarr 0.5 with its own pyramid, written block by block and resumable.

Layout of ``OUT.zarr``:
- segmentation: the root is a label image (argmax, uint8/uint16, class names and colours from the model card);
  ``OUT.zarr/probabilities`` (optional) is a float16 image with one channel per class;
- restoration: the root is an image of the input's dtype and channels;
- classification: the root is a float16 heatmap, one channel per class, one pixel per tile stride.
``OUT.zarr/napari_hires_journal/blocks`` has one byte per output block, set once the block is written: a rerun of
the same job skips those blocks; the store is marked complete only when every block and every level is written.
Each block also writes the coarser levels that lie under it alone, from memory (no re-reading of level 0, and done
while the model runs); only the few coarsest levels are derived when the run finishes.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from napari_hires.engine.tiling import Box
from napari_hires.io.pyramid_store import JOURNAL, PyramidStore

__all__ = ["JOURNAL", "OutputSpec", "create_output", "run_record", "weights_digest"]

#: In every run record: a store begun by an engine that wrote it differently (1: all coarser levels at the end;
#: 2: blocks write the levels under them) is not resumed by this one, whose finished blocks would lack levels.
STORE_FORMAT = 2
DEFAULT_COLORS = [(0, 0, 0, 0), (0.9, 0.6, 0.7, 1), (0.5, 0.2, 0.6, 1), (0.2, 0.1, 0.5, 1),
                  (0.2, 0.7, 0.3, 1), (0.9, 0.8, 0.1, 1), (0.1, 0.6, 0.9, 1), (0.9, 0.3, 0.1, 1)]


def weights_digest(model: Any) -> str:
    """A short hash of a model's weights, so that a store is resumed only by the same model."""
    h = hashlib.sha1()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class OutputSpec:
    """What the engine writes: the stores (the root's first) that blocks are written into, and the job's journal."""

    out: Path
    stores: list[PyramidStore]
    journal: zarr.Array
    block: int  # output block side in pixels (a multiple of the chunk)
    shape: tuple[int, int]  # output level-0 (y, x)
    own_levels: int = 0  # coarser levels each block writes itself: those whose chunks lie under one block alone

    @property
    def resumed(self) -> bool:
        return self.stores[0].resumed

    @property
    def complete(self) -> bool:
        """The same job finished this store earlier: nothing is left to write."""
        return self.stores[0].complete

    def block_boxes(self) -> list[tuple[tuple[int, int], Box]]:
        """((row, col), box) of every output block, row-major."""
        h, w = self.shape
        return [
            ((r, c), Box(r * self.block, min(h, (r + 1) * self.block), c * self.block, min(w, (c + 1) * self.block)))
            for r in range(math.ceil(h / self.block)) for c in range(math.ceil(w / self.block))
        ]

    def done(self) -> np.ndarray:
        """Journal as a boolean (rows, cols) array: which blocks a previous run of this job finished."""
        return self.journal[...].astype(bool)

    def mark_done(self, index: tuple[int, int]) -> None:
        self.journal[index] = 1

    def write_block(self, box: Box, arrays: list[np.ndarray]) -> None:
        """Store one block's level-0 arrays (one per store, in its NGFF axis order) and the coarser levels it owns.

        Safe from any thread or process: every chunk written here lies under this block alone.
        """
        for store, data in zip(self.stores, arrays):
            store.write(box, data, last=self.own_levels)

    def update_levels(self, box: Box) -> None:
        """Recompute the levels coarser than the blocks' own over a written block (a live view of a running job)."""
        f = 2 ** self.own_levels
        for store in self.stores:
            store.update_levels(Box(box.y0 // f, math.ceil(box.y1 / f), box.x0 // f, math.ceil(box.x1 / f)),
                                first=self.own_levels)

    def finish(self) -> None:
        """Derive the remaining coarser levels and write the NGFF metadata (the store is complete after this)."""
        if self.complete:
            return
        for store in self.stores:
            store.derive(first=self.own_levels + 1)
        for store in reversed(self.stores):  # the root last: its metadata says the whole store is complete
            store.finish()


def _own_levels(block: int, chunk: int, n_levels: int) -> int:
    """Coarser levels whose chunks lie under one block alone (blocks start at multiples of ``block``): a block
    writes those itself, with no other block (thread or dask worker) touching the same chunk."""
    k = 0
    while k + 1 < n_levels and block % 2 ** (k + 1) == 0 and (block >> (k + 1)) % chunk == 0:
        k += 1
    return k


def create_output(
    out: str | Path,
    *,
    task: str,
    shape: tuple[int, int],
    channels: int,
    dtype: Any,
    class_names: dict[int, str],
    class_colors: dict[int, Any],
    scale: tuple[float, float],
    translation: tuple[float, float],
    name: str,
    chunk: int,
    block: int,
    probabilities: bool,
    overwrite: bool,
    run: dict[str, Any],
) -> OutputSpec:
    """Create (or reopen, for the same ``run``) the output store and its journal."""
    out = Path(out)
    common = dict(name=name, chunk=chunk, overwrite=overwrite, run=run)
    scores = dict(dtype=np.float16, channel_names=list(class_names.values()), contrast_limits=[(0.0, 1.0)] * channels)

    def store(path: Path, shape: tuple[int, ...], axes: str, **meta: Any) -> PyramidStore:
        grid = {"scale": tuple({"y": scale[0], "x": scale[1]}.get(a, 1.0) for a in axes),
                "translation": tuple({"y": translation[0], "x": translation[1]}.get(a, 0.0) for a in axes)}
        return PyramidStore.create(path, shape=shape, axes=axes, **grid, **common, **meta)

    if task == "segmentation":
        colors = {k: tuple(v) for k, v in class_colors.items()} or {
            i: DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(channels)}
        stores = [store(out, shape, "yx", dtype=np.uint8 if channels <= 255 else np.uint16, kind="labels",
                        class_names=class_names, class_colors=colors)]
        if probabilities:
            stores.append(store(out / "probabilities", (channels, *shape), "cyx", **scores))
    elif task == "restoration":
        rgb = channels > 1
        stores = [store(out, shape + ((channels,) if rgb else ()), "yxc" if rgb else "yx", dtype=dtype)]
    else:
        stores = [store(out, (channels, *shape), "cyx", **scores)]
    journal = stores[0].journal((math.ceil(shape[0] / block), math.ceil(shape[1] / block)))
    own = _own_levels(block, chunk, min(len(s.levels) for s in stores))
    return OutputSpec(out=out, stores=stores, journal=journal, block=block, shape=shape, own_levels=own)


def run_record(**facts: Any) -> dict[str, Any]:
    """The JSON-able description of a job that decides whether an unfinished store may be resumed by it (and
    whether a complete one is its own, finished): its settings, and its input's content
    (:func:`napari_hires.io.job_identity.content_identity`, under ``content``)."""
    return json.loads(json.dumps({"store_format": STORE_FORMAT, **facts}, sort_keys=True, default=str))
