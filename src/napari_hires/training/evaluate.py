"""How good a model is on a held-out region: Dice for segmentation, PSNR gain for restoration.

Predictions come from the engine's tiled path (:func:`napari_hires.engine.predict_rectangle` with the model's own
tile, halo and blending), exactly what a user sees, not from a single forward pass. Dice is the mean over the classes
present in the ground truth of the region (a class absent from the truth has no defined Dice).

The held-out scores that training reports (:class:`HeldOutDice`, :class:`HeldOutBlindSpot`) score the held-out
cells of a :class:`~napari_hires.training.split.Split`; higher is better for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from napari_hires.engine.intensity import InputRange, dtype_range
from napari_hires.engine.preview import predict_rectangle
from napari_hires.engine.runner import TileRunner
from napari_hires.engine.source import ImageSource, as_source
from napari_hires.engine.tiling import Box, layout_for
from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel
from napari_hires.training.sampling import IGNORE_INDEX
from napari_hires.training.selfsupervised import MASK_RATIO, blind_spot_mask
from napari_hires.training.split import Split


def dice_per_class(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice of each class present in ``truth`` (pixels labelled ``IGNORE_INDEX`` in ``truth`` are left out)."""
    if pred.shape != truth.shape:
        raise HiresError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    keep = truth != IGNORE_INDEX
    p, t = pred[keep].astype(np.int64), truth[keep].astype(np.int64)
    scores = {}
    for k in range(num_classes):
        in_t, in_p = t == k, p == k
        if in_t.any():
            scores[k] = float(2 * np.count_nonzero(in_t & in_p) / (np.count_nonzero(in_t) + np.count_nonzero(in_p)))
    return scores


def mean_dice(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the classes present in ``truth``."""
    scores = dice_per_class(pred, truth, num_classes)
    if not scores:
        raise HiresError("the ground truth has no labelled pixels, so Dice is undefined")
    return float(np.mean(list(scores.values())))


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio of ``image`` against ``reference`` in dB."""
    mse = float(np.mean((np.asarray(image, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def predict_box(model: HiresModel, image: Any, box: Sequence[int], *, level: int = 0, device: str = "auto",
                batch: int = 4) -> np.ndarray:
    """The engine's output for ``box`` (y0, y1, x0, x1, level pixels): labels (y, x) or restored pixels (y, x, c)."""
    source = as_source(image, level)
    runner = TileRunner(model, device=device, batch=batch)
    return predict_rectangle(runner, source, Box(*(int(v) for v in box)), layout_for(model))


@dataclass(frozen=True)
class Score:
    """One held-out evaluation: the score (higher is better) and, for segmentation, Dice per class."""

    value: float
    per_class: dict[int, float] = field(default_factory=dict)


def _patch_source(image: np.ndarray, input_range: InputRange | None) -> ImageSource:
    """A training patch as an engine source, scaled as the image it was read from (not as its own pixels)."""
    source = as_source(image)
    if input_range is not None:
        source.input_range = input_range  # the cached property, set to the image's range
    return source


class HeldOutDice:
    """Mean Dice (and Dice per class) of the engine's prediction on the labelled pixels of the held-out cells."""

    metric = "Dice"
    tolerance = 0.005  # a change smaller than this is no change
    definition = ("mean Dice over the classes present in the held-out cells' labels, of the engine's tiled "
                  "prediction (the model's tile, halo and blending) on their labelled pixels")

    def __init__(self, split: Split, *, device: str = "auto", precision: str = "auto") -> None:
        self.split, self.device, self.precision = split, device, precision
        self.sources = {c.patch: _patch_source(split.patches[c.patch].image, split.patches[c.patch].input_range)
                        for c in split.held_out}

    def __call__(self, model: HiresModel) -> Score:
        runner = TileRunner(model, device=self.device, precision=self.precision)
        layout = layout_for(model)
        preds, truths = [], []
        for cell in self.split.held_out:
            preds.append(predict_rectangle(runner, self.sources[cell.patch], cell.box, layout).ravel())
            truths.append(self.split.patches[cell.patch].labels[cell.box.slices].ravel())
        scores = dice_per_class(np.concatenate(preds), np.concatenate(truths), model.out_channels)
        return Score(float(np.mean(list(scores.values()))), scores)


class HeldOutBlindSpot:
    """PSNR (dB) of the model's blind-spot prediction of held-out pixels against their own noisy values.

    With no clean image there is nothing else to score against: in each held-out cell a seeded ``ratio`` of pixels
    is replaced by neighbours, as in training, and the model's output there is compared with the hidden values. The
    noise is part of that error, so the figure is below the PSNR against a clean image, but for pixel-independent
    noise it rises exactly as the model's error against the clean signal falls.
    """

    metric = "blind-spot PSNR dB"
    tolerance = 0.05
    definition = ("PSNR (dB, the image's input range) of the model's output at blind-spot pixels of the held-out "
                  "cells (4 seeded masks, as in training) against their noisy values; the noise counts as error, so "
                  "it is lower than a PSNR against a clean image")

    def __init__(self, split: Split, tile: int, *, ratio: float = MASK_RATIO, masks: int = 4, seed: int = 0,
                 device: str = "auto", precision: str = "auto") -> None:
        self.split, self.tile, self.ratio, self.masks, self.seed = split, tile, ratio, masks, seed
        self.device, self.precision = device, precision

    def _window(self, cell: Any) -> tuple[Box, Box]:
        """A tile-sized window of the patch around ``cell`` and the cell in the window's pixels."""
        h, w = self.split.patches[cell.patch].image.shape[:2]
        (y0, y1, x0, x1), t = cell.box, self.tile
        wy = int(np.clip((y0 + y1 - t) // 2, 0, h - t))
        wx = int(np.clip((x0 + x1 - t) // 2, 0, w - t))
        return Box(wy, wy + t, wx, wx + t), Box(y0 - wy, y1 - wy, x0 - wx, x1 - wx)

    def __call__(self, model: HiresModel) -> Score:
        runner = TileRunner(model, device=self.device, precision=self.precision)
        errors, count = 0.0, 0
        generator = torch.Generator().manual_seed(self.seed)
        for cell in self.split.held_out:
            patch = self.split.patches[cell.patch]
            window, inside = self._window(cell)
            pixels = patch.image[window.slices][None]
            x = runner.to_input(pixels, patch.input_range).float().cpu()
            keep = torch.zeros((1, 1, *x.shape[2:]), dtype=torch.bool)
            keep[..., inside.y0:inside.y1, inside.x0:inside.x1] = True
            for _ in range(self.masks):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
                    masked, mask = blind_spot_mask(x, self.ratio)
                mask &= keep
                with torch.inference_mode():
                    out = runner.model(torch.where(mask, masked, x).to(runner.device))
                restored = runner.from_output(out, pixels.dtype, x.shape[1], patch.input_range).cpu()
                raw = torch.from_numpy(pixels.astype(np.float32)).permute(0, 3, 1, 2)
                chosen = mask.expand_as(raw)
                errors += float(((restored - raw)[chosen] ** 2).sum())
                count += int(chosen.sum())
        first = self.split.patches[0]
        low, high = (first.input_range or dtype_range(first.image.dtype)).fit(first.image.shape[-1])
        rmse = np.sqrt(errors / max(count, 1))
        return Score(float(psnr(rmse, 0.0, float(np.mean(high - low)))))  # an error of rmse against nothing


def evaluate_segmentation(model: HiresModel, image: Any, truth: Any, box: Sequence[int], *, level: int = 0,
                          device: str = "auto") -> dict[str, Any]:
    """Mean and per-class Dice of the model's tiled prediction on ``box`` against ``truth`` (same level)."""
    pred = predict_box(model, image, box, level=level, device=device)
    y0, y1, x0, x1 = (int(v) for v in box)
    gt = as_source(truth, level).read(Box(y0, y1, x0, x1))[..., 0]
    scores = dice_per_class(pred, gt, model.out_channels)
    return {"dice": round(float(np.mean(list(scores.values()))), 4),
            "dice_per_class": {str(k): round(v, 4) for k, v in scores.items()},
            "dice_definition": "mean over the classes present in the ground truth of the region",
            "region": [y0, y1, x0, x1], "level": level}


def evaluate_restoration(model: HiresModel, degraded: Any, clean: Any, box: Sequence[int], *, level: int = 0,
                         device: str = "auto") -> dict[str, Any]:
    """PSNR of the degraded and of the restored ``box`` against the clean image, and the gain in dB."""
    restored = predict_box(model, degraded, box, level=level, device=device)
    y0, y1, x0, x1 = (int(v) for v in box)
    ref = as_source(clean, level).read(Box(y0, y1, x0, x1))
    before = psnr(as_source(degraded, level).read(Box(y0, y1, x0, x1)), ref)
    after = psnr(restored.reshape(ref.shape), ref)
    return {"psnr_before": round(float(before), 2), "psnr_after": round(float(after), 2),
            "psnr_gain": round(float(after - before), 2),
            "region": [y0, y1, x0, x1], "level": level}
