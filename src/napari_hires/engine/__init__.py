"""Tiled inference: seam-free blending, blocks that own their output, resumable OME-Zarr stores; no Qt here."""

from napari_hires.engine.events import BlockWritten, Finishing, Planned, drain
from napari_hires.engine.options import RunOptions, auto_batch
from napari_hires.engine.predict import (
    BlockJob,
    PredictionPlan,
    PredictionResult,
    plan_prediction,
    predict,
    resolve_model,
    run_prediction,
)
from napari_hires.engine.preview import PreviewResult, PreviewService, predict_rectangle
from napari_hires.engine.runner import CancelToken, Cancelled, TileRunner
from napari_hires.engine.tiling import Box, TileLayout

__all__ = [
    "BlockJob",
    "BlockWritten",
    "Box",
    "CancelToken",
    "Cancelled",
    "Finishing",
    "Planned",
    "PredictionPlan",
    "PredictionResult",
    "PreviewResult",
    "PreviewService",
    "RunOptions",
    "TileLayout",
    "TileRunner",
    "auto_batch",
    "drain",
    "plan_prediction",
    "predict",
    "predict_rectangle",
    "resolve_model",
    "run_prediction",
]
