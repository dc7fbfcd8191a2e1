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
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from napari_hires.engine.tiling import Box
from napari_hires.io.downsample import downsample_mean, downsample_mode
from napari_hires.io.ome_zarr_writer import OmeZarrWriter
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.pyramid_update import update_levels

JOURNAL = "napari_hires_journal/blocks"
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


def _template(shape: tuple[int, ...], axes: str, dtype: Any, **kwargs: Any) -> Pyramid:
    """A Pyramid describing an output's level 0 (never computed: the engine fills the store itself)."""
    level = da.zeros(shape, dtype=dtype, chunks=tuple(min(n, 4096) for n in shape))
    (sy, sx), (ty, tx) = kwargs.pop("scale"), kwargs.pop("translation")
    scale = tuple({"y": sy, "x": sx}.get(a, 1.0) for a in axes)
    translation = tuple({"y": ty, "x": tx}.get(a, 0.0) for a in axes)
    return Pyramid(levels=[level], axes=axes, scale=scale, translation=translation, **kwargs)


@dataclass
class OutputSpec:
    """What the engine writes: the per-block arrays (level 0) and the writers that turn them into pyramids."""

    writers: list[OmeZarrWriter]
    journal: zarr.Array
    block: int  # output block side in pixels (a multiple of the chunk)
    shape: tuple[int, int]  # output level-0 (y, x)
    own_levels: int = 0  # coarser levels each block writes itself: those whose chunks lie under one block alone
    _shared: threading.Lock = field(default_factory=threading.Lock, repr=False)  # coarser chunks span blocks

    @property
    def resumed(self) -> bool:
        return self.writers[0].resumed

    @property
    def complete(self) -> bool:
        """The same job finished this store earlier: nothing is left to write."""
        return self.writers[0].complete

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
        """Store one block's level-0 arrays (one per writer, in its NGFF axis order) and the coarser levels it owns.

        Safe from any thread or process: every chunk written here lies under this block alone.
        """
        for writer, data in zip(self.writers, arrays):
            plan, levels = writer.plans[0], writer.arrays[""]
            kernel = downsample_mode if plan.pyramid.kind == "labels" else downsample_mean
            iy, ix = plan.axes.index("y"), plan.axes.index("x")
            y0, x0 = box.y0, box.x0
            for k in range(self.own_levels + 1):
                if k:
                    data, y0, x0 = kernel(data, 2, plan.axes), y0 // 2, x0 // 2
                levels[k][Box(y0, y0 + data.shape[iy], x0, x0 + data.shape[ix]).index(plan.axes)] = data

    def update_levels(self, box: Box) -> None:
        """Recompute the levels coarser than the blocks' own over a written block (a live view of a running job)."""
        k, f = self.own_levels, 2 ** self.own_levels
        for writer in self.writers:
            plan = writer.plans[0]
            with self._shared:
                update_levels(writer.arrays[""][k:], box.y0 // f, math.ceil(box.y1 / f), box.x0 // f,
                              math.ceil(box.x1 / f), axes=plan.axes, labels=plan.pyramid.kind == "labels")

    def finish(self) -> None:
        """Derive the remaining coarser levels and write the NGFF metadata (the store is complete after this)."""
        if self.complete:
            return
        for writer in self.writers:
            writer.write(first=self.own_levels + 1)
        for writer in reversed(self.writers):  # the root last: its metadata says the whole store is complete
            writer.finish()


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
    common = dict(scale=scale, translation=translation, name=name, source=None)
    writers = []
    if task == "segmentation":
        label_dtype = np.uint8 if channels <= 255 else np.uint16
        colors = {k: tuple(v) for k, v in class_colors.items()} or {
            i: DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(channels)}
        labels = _template(shape, "yx", label_dtype, kind="labels", class_names=class_names, class_colors=colors,
                           **common)
        writers.append(OmeZarrWriter(labels, out, chunk=chunk, derive_levels=True, overwrite=overwrite, run=run))
        if probabilities:
            probs = _template((channels, *shape), "cyx", np.float16, channel_names=list(class_names.values()),
                              contrast_limits=[(0.0, 1.0)] * channels, **common)
            writers.append(OmeZarrWriter(probs, out / "probabilities", chunk=chunk, derive_levels=True,
                                         overwrite=overwrite, run=run))
    elif task == "restoration":
        axes = "yxc" if channels > 1 else "yx"
        image = _template(shape + ((channels,) if channels > 1 else ()), axes, dtype, **common)
        writers.append(OmeZarrWriter(image, out, chunk=chunk, derive_levels=True, overwrite=overwrite, run=run))
    else:
        heat = _template((channels, *shape), "cyx", np.float16, channel_names=list(class_names.values()),
                         contrast_limits=[(0.0, 1.0)] * channels, **common)
        writers.append(OmeZarrWriter(heat, out, chunk=chunk, derive_levels=True, overwrite=overwrite, run=run))
    root = writers[0].root
    rows, cols = math.ceil(shape[0] / block), math.ceil(shape[1] / block)
    if (writers[0].resumed or writers[0].complete) and JOURNAL in root:
        journal = root[JOURNAL]
    else:
        journal = root.require_group("napari_hires_journal").create_array(
            "blocks", shape=(rows, cols), chunks=(1, 1), dtype=np.uint8, fill_value=0, overwrite=True)
    own = _own_levels(block, chunk, min(len(w.plans[0].shapes) for w in writers))
    return OutputSpec(writers=writers, journal=journal, block=block, shape=shape, own_levels=own)


def run_record(**facts: Any) -> dict[str, Any]:
    """The JSON-able description of a job that decides whether an unfinished store may be resumed by it (and
    whether a complete one is its own, finished): its settings, and its input's content
    (:func:`napari_hires.io.job_identity.content_identity`, under ``content``)."""
    return json.loads(json.dumps({"store_format": STORE_FORMAT, **facts}, sort_keys=True, default=str))
