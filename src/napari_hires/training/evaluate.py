"""How good a model is on a held-out region: Dice for segmentation, PSNR gain for restoration.

Predictions come from the engine's tiled path (:func:`napari_hires.engine.predict_rectangle` with the model's own
tile, halo and blending), exactly what a user sees, not from a single forward pass. Dice is the mean over the classes
present in the ground truth of the region (a class absent from the truth has no defined Dice).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from napari_hires.engine.preview import predict_rectangle
from napari_hires.engine.runner import TileRunner
from napari_hires.engine.source import as_source
from napari_hires.engine.tiling import Box, layout_for
from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel
from napari_hires.training.sampling import IGNORE_INDEX


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
