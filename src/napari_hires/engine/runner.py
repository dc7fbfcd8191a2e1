"""A model on a device, turning image regions into blended per-pixel outputs tile batch by tile batch.

Pixels travel to the device as their own integer type and are normalised there (4x less to copy than float32), from
the image's input range (engine/intensity.py: each image's own range is the model's 0..1); tiles are blended on the
device; missing (NaN/Inf) pixels of float images are filled for the model and blanked in the output; on
out-of-memory the batch halves and the run goes on.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from napari_hires.engine.device import autocast, is_out_of_memory, resolve_device, resolve_precision
from napari_hires.engine.intensity import InputRange, dtype_range, missing_pixels
from napari_hires.engine.tiling import Box, TileLayout, tile_weights, tiles_for
from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel
from napari_hires.models.card import Normalization


def _trusted(tile: Box, tapers: tuple[bool, bool, bool, bool], margin: int,
             box: Box) -> tuple[tuple[int, int, int, int], Box]:
    """The part of ``tile`` that is trusted without a cross-fade (``margin`` off every tapered edge that is not also
    the edge of ``box``), in tile coordinates and in ``box`` coordinates; together the tiles' parts cover ``box``."""
    top = margin if tapers[0] and tile.y0 > box.y0 else 0
    bottom = margin if tapers[1] and tile.y1 < box.y1 else 0
    left = margin if tapers[2] and tile.x0 > box.x0 else 0
    right = margin if tapers[3] and tile.x1 < box.x1 else 0
    h, w = tile.shape
    inner = (top, h - bottom, left, w - right)
    return inner, Box(tile.y0 - box.y0 + top, tile.y1 - box.y0 - bottom, tile.x0 - box.x0 + left,
                      tile.x1 - box.x0 - right)


class Cancelled(Exception):
    """A run was cancelled between two batches; nothing partial was written."""


class CancelToken:
    """Set from any thread (a Cancel button, a signal handler); runs check it between batches. A token made with a
    ``parent`` is cancelled with it too (a run stopping its own work without cancelling the caller's token)."""

    def __init__(self, parent: "CancelToken | None" = None) -> None:
        self._event = threading.Event()
        self._parent = parent

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set() or (self._parent is not None and self._parent.cancelled)

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled()


def default_normalization(channels: int) -> Normalization:
    """Centre values of the 0..1 scale: what untrained or card-less models get."""
    return Normalization(scale=1.0, mean=[0.5] * channels, std=[0.25] * channels)


class TileRunner:
    """Runs ``model`` on tiles of (y, x, c) regions: segmentation probabilities, restored pixels or class scores."""

    def __init__(
        self,
        model: HiresModel,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch: int = 4,
        normalization: Normalization | None = None,
    ) -> None:
        if batch < 1:
            raise HiresError(f"batch must be at least 1, got {batch}")
        self.device = resolve_device(device)
        self.amp_dtype = resolve_precision(precision, self.device)
        self.batch = batch
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task = model.task
        norm = normalization or (model.card.normalization if model.card is not None else None)
        self.normalization = norm
        self.tile_pixels = 0  # input pixels of every tile this runner has run (for the overlap factor k)
        self._norm_cache: dict[tuple, tuple[torch.Tensor, ...]] = {}
        self._weight_cache: dict[tuple, torch.Tensor] = {}

    # ------------------------------------------------------------------ tensors
    def _norm(self, dtype: np.dtype, channels: int, input_range: InputRange | None) -> tuple[torch.Tensor, ...]:
        """(gain, shift, out_gain, out_shift), (1, c, 1, 1) each: model input = pixel * gain + shift, and restored
        pixel = output * out_gain + out_shift; ``input_range`` (default: the dtype's) is the model's 0..1."""
        input_range = input_range or dtype_range(dtype, channels)
        key = (np.dtype(dtype), channels, input_range)
        if key not in self._norm_cache:
            norm = self.normalization or default_normalization(channels)
            if len(norm.mean) != channels or len(norm.std) != channels:
                raise HiresError(
                    f"the model's normalisation has {len(norm.mean)} channels but the image gives {channels}"
                )
            low, high = input_range.fit(channels)

            def tensor(values) -> torch.Tensor:
                return torch.tensor(values, dtype=torch.float32, device=self.device).view(1, channels, 1, 1)

            mean, std, low_t, span = tensor(norm.mean), tensor(norm.std), tensor(low), tensor(high - low)
            scale = tensor(1.0 / (high - low))
            self._norm_cache[key] = (std.reciprocal() * scale, (-low_t * scale - mean) / std, std * span,
                                     mean * span + low_t)
        return self._norm_cache[key]

    def to_input(self, tiles: np.ndarray, input_range: InputRange | None = None) -> torch.Tensor:
        """(n, y, x, c) integer or float tiles -> normalised (n, c, y, x) float32 on the device.

        ``input_range``: the raw values that are the model's 0..1 (the image's, :attr:`ImageSource.input_range`;
        default: the dtype's range, 0..1 for floats). NaN and Inf become the normalisation mean (input 0).
        """
        gain, shift, _, _ = self._norm(tiles.dtype, tiles.shape[-1], input_range)
        if tiles.dtype == np.uint16:  # torch has limited uint16 support: widen on the host (still 2x less than f32)
            tiles = tiles.astype(np.int32)
        x = torch.from_numpy(np.ascontiguousarray(tiles))
        if self.device.type == "cuda":
            x = x.pin_memory()
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2)
        if x.dtype == torch.float64:
            x = x.float()
        x = torch.addcmul(shift, x, gain)  # ((x - low) / (high - low) - mean) / std: one pass, channels-last
        if tiles.dtype.kind == "f":  # missing pixels: what the model sees as the mean of its training data
            x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def from_output(self, out: torch.Tensor, dtype: np.dtype, channels: int,
                    input_range: InputRange | None = None) -> torch.Tensor:
        """Model output -> what is blended: probabilities (segmentation, classification) or pixel values (restored
        pixels go back to ``input_range``, the input's scale)."""
        out = out.float().contiguous()  # channel planes: softmax and blending read them in order
        if self.task == "restoration":
            _, _, out_gain, out_shift = self._norm(np.dtype(dtype), channels, input_range)
            return torch.addcmul(out_shift, out, out_gain)
        return torch.softmax(out, dim=1)

    def weights(self, key: tuple) -> torch.Tensor:
        """Blend weights of a tile kind, on the device, made once per kind."""
        if key not in self._weight_cache:
            self._weight_cache[key] = torch.from_numpy(tile_weights(*key).copy()).to(self.device)
        return self._weight_cache[key]

    # ------------------------------------------------------------------ running
    def run_batch(self, tiles: np.ndarray, input_range: InputRange | None = None) -> torch.Tensor:
        """Model outputs for (n, y, x, c) tiles, in sub-batches of ``self.batch`` that halve on out-of-memory;
        ``input_range`` as for :meth:`to_input`."""
        self.tile_pixels += tiles.shape[0] * tiles.shape[1] * tiles.shape[2]
        outputs = []
        i = 0
        while i < len(tiles):
            chunk = tiles[i:i + self.batch]
            try:
                with torch.inference_mode(), autocast(self.device, self.amp_dtype):
                    out = self.model(self.to_input(chunk, input_range))
                outputs.append(self.from_output(out, tiles.dtype, tiles.shape[-1], input_range))
                i += len(chunk)
            except (RuntimeError, torch.OutOfMemoryError) as err:
                if not is_out_of_memory(err):
                    raise
                if self.batch == 1:
                    raise HiresError(
                        f"the {self.device.type} device ran out of memory with one {tiles.shape[1]}x{tiles.shape[2]} "
                        "tile; use a smaller --tile or another device"
                    ) from None
                self.batch //= 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def predict_region(
        self, region: np.ndarray, box: Box, image: Box, layout: TileLayout, cancel: CancelToken | None = None,
        input_range: InputRange | None = None,
    ) -> tuple[torch.Tensor, int]:
        """Blended output (channels, y, x) over ``box`` from the (y, x, c) pixels ``region``, and the tiles run.

        ``input_range`` as for :meth:`to_input`. Missing (NaN/Inf) pixels of ``region`` get 0 in every channel:
        label 0 with probabilities 0, or restored value 0.
        """
        tiles = tiles_for(box, image, layout)
        crop = layout.blend == 0  # no cross-fade: each tile gives its trusted part, no weights to sum
        acc: torch.Tensor | None = None
        wsum = None if crop else torch.zeros(box.shape, dtype=torch.float32, device=self.device)
        by_shape: dict[tuple[int, int], list[tuple[Box, tuple]]] = {}
        for tile, key in tiles:
            by_shape.setdefault(tile.shape, []).append((tile, key))
        for group in by_shape.values():
            start = 0
            while start < len(group):  # self.batch may halve on the way (out of memory)
                if cancel is not None:
                    cancel.check()
                part = group[start:start + self.batch]
                start += len(part)
                pixels = np.stack([
                    region[t.y0 - box.y0:t.y1 - box.y0, t.x0 - box.x0:t.x1 - box.x0] for t, _ in part
                ])
                out = self.run_batch(pixels, input_range)
                if acc is None:
                    acc = torch.zeros((out.shape[1], *box.shape), dtype=torch.float32, device=self.device)
                for (t, key), o in zip(part, out):
                    if crop:
                        (ty0, ty1, tx0, tx1), at = _trusted(t, key[3], layout.margin, box)
                        acc[:, at.y0:at.y1, at.x0:at.x1] = o[:, ty0:ty1, tx0:tx1]
                        continue
                    wt = self.weights(key)
                    ys, xs = slice(t.y0 - box.y0, t.y1 - box.y0), slice(t.x0 - box.x0, t.x1 - box.x0)
                    acc[:, ys, xs].addcmul_(o, wt)
                    wsum[ys, xs] += wt
        assert acc is not None
        if not crop:
            acc.div_(wsum)
        missing = missing_pixels(region)
        if missing is not None:
            acc.masked_fill_(torch.from_numpy(missing).to(self.device), 0.0)
        return acc, len(tiles)

    def classify_tiles(self, tiles: np.ndarray, cancel: CancelToken | None = None,
                       input_range: InputRange | None = None) -> torch.Tensor:
        """Class probabilities (n, classes) of (n, y, x, c) tiles, batch by batch (``input_range``: see
        :meth:`to_input`)."""
        out = []
        start = 0
        while start < len(tiles):  # self.batch may halve on the way (out of memory)
            if cancel is not None:
                cancel.check()
            part = tiles[start:start + self.batch]
            out.append(self.run_batch(part, input_range))
            start += len(part)
        return torch.cat(out)
