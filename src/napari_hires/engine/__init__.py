"""Tiled inference: seam-free blending, blocks that own their output, resumable OME-Zarr stores; no Qt here."""

from napari_hires.engine.predict import (
    BlockJob,
    PredictionPlan,
    PredictionResult,
    plan_prediction,
    predict,
    resolve_model,
)
from napari_hires.engine.preview import PreviewResult, PreviewService, predict_rectangle
from napari_hires.engine.runner import CancelToken, Cancelled, TileRunner
from napari_hires.engine.tiling import Box, TileLayout

__all__ = [
    "BlockJob",
    "Box",
    "CancelToken",
    "Cancelled",
    "PredictionPlan",
    "PredictionResult",
    "PreviewResult",
    "PreviewService",
    "TileLayout",
    "TileRunner",
    "plan_prediction",
    "predict",
    "predict_rectangle",
    "resolve_model",
]
