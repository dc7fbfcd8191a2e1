"""Region-level steps shared by whole-image prediction and the viewport preview.

Reading pixels with context (mirrored past the image edge), fitting channels to the model, turning blended outputs
into what is stored (labels or pixels), and laying out classification tiles (one per output pixel). Missing
(NaN/Inf) pixels are no-data in the output (engine/intensity.py); the runner blanks them in dense outputs.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from napari_hires.engine.intensity import InputRange, missing_pixels
from napari_hires.engine.runner import CancelToken, TileRunner
from napari_hires.engine.source import ImageSource
from napari_hires.engine.tiling import Box, TileLayout
from napari_hires.errors import HiresError

Adapter = Callable[[np.ndarray], np.ndarray]


def channel_adapter(have: int, want: int, name: str) -> Adapter:
    """Make (y, x, have) pixels into (y, x, want): gray to RGB by repetition, RGBA to RGB by dropping alpha."""
    if have == want:
        return lambda a: a
    if have == 1 and want == 3:
        return lambda a: np.repeat(a, 3, axis=-1)
    if have == 4 and want == 3:
        return lambda a: a[..., :3]
    raise HiresError(f"{name} has {have} channels but the model takes {want}; choose a model for {have}-channel "
                     "images or convert the image")


def read_padded(source: ImageSource, box: Box, adapt: Adapter) -> np.ndarray:
    """Pixels of ``box``; parts outside the image are mirrored (or repeated where the image is too small)."""
    inside = box.intersect(source.bounds)
    if inside is None:
        raise HiresError(f"box {box} does not meet {source.name} (0..{source.shape[0]}, 0..{source.shape[1]})")
    pixels = adapt(source.read(inside))
    pad = ((inside.y0 - box.y0, box.y1 - inside.y1), (inside.x0 - box.x0, box.x1 - inside.x1))
    if any(p for pair in pad for p in pair):
        mode = "reflect" if all(p < n for pair, n in zip(pad, pixels.shape) for p in pair) else "edge"
        pixels = np.pad(pixels, pad + ((0, 0),), mode=mode)
    return pixels


def argmax_labels(out: torch.Tensor) -> torch.Tensor:
    """Index of the largest of (classes, y, x) per pixel, ties to the lower class like ``argmax``.

    A running maximum over whole class planes: several times faster than ``argmax(0)``, which reduces across planes
    far apart in memory.
    """
    labels = torch.zeros(out.shape[1:], dtype=torch.uint8 if out.shape[0] <= 255 else torch.int32, device=out.device)
    best = out[0].clone()
    for k in range(1, out.shape[0]):
        wins = out[k] > best
        labels[wins] = k
        torch.maximum(best, out[k], out=best)
    return labels


def dense_output(out: torch.Tensor, task: str, dtype: np.dtype) -> np.ndarray:
    """Blended (channels, y, x) output as stored: argmax labels, or pixels in ``dtype`` ((y, x) for one channel)."""
    if task == "segmentation":
        return argmax_labels(out).cpu().numpy()
    values = out.permute(1, 2, 0).cpu().numpy()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    values = values.astype(dtype)
    return values[..., 0] if values.shape[-1] == 1 else values


def heatmap_input(out_box: Box, layout: TileLayout) -> Box:
    """The input pixels read for heatmap pixels ``out_box``: each one's tile is centred on its stride cell."""
    t, s = layout.tile, layout.tile - layout.overlap
    y0, x0 = out_box.y0 * s + s // 2 - t // 2, out_box.x0 * s + s // 2 - t // 2
    rows, cols = out_box.shape
    return Box(y0, y0 + (rows - 1) * s + t, x0, x0 + (cols - 1) * s + t)


def classify_pixels(runner: TileRunner, pixels: np.ndarray, shape: tuple[int, int], layout: TileLayout,
                    cancel: CancelToken | None = None,
                    input_range: InputRange | None = None) -> tuple[np.ndarray, int]:
    """Class probabilities (classes, rows, cols) as float16 from the pixels :func:`heatmap_input` gave, and tiles run.

    A heatmap pixel whose stride cell is at least half missing (NaN/Inf) is no-data: 0 for every class.
    """
    t, s = layout.tile, layout.tile - layout.overlap
    rows, cols = shape
    tiles = np.stack([pixels[r * s:r * s + t, c * s:c * s + t] for r in range(rows) for c in range(cols)])
    heat = runner.classify_tiles(tiles, cancel, input_range).T.reshape(-1, rows, cols).half().cpu().numpy()
    missing = missing_pixels(pixels)
    if missing is not None:
        off = t // 2 - s // 2  # each tile is centred on its stride cell
        cells = missing[off:off + rows * s, off:off + cols * s].reshape(rows, s, cols, s).mean(axis=(1, 3))
        heat[:, cells >= 0.5] = 0
    return heat, len(tiles)
