"""A published-format MaxViT encoder made here, since no ImageNet weights can be downloaded: a ``maxvit_nano_seg``
trained on the top half of skimage's immunohistochemistry tile (every pixel labelled by colour deconvolution) with
its backbone written as timm writes it (``model.safetensors`` under timm names, beside a Hugging Face config.json).
Used by the encoder test and ``benchmarks/training.py --encoder``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ihc_tile import IGNORE, ihc_tile

NANO = {"num_classes": 4, "window_size": 4}  # 128-px windows of 4 x 4 tokens at stride 32


def top_half_labels() -> np.ndarray:
    """The tile's derived classes on its top half (what the encoder learns from), the bottom half unlabelled."""
    _, truth, _ = ihc_tile()
    top = np.full_like(truth, IGNORE)
    top[: truth.shape[0] // 2] = truth[: truth.shape[0] // 2]
    return top


def bottom_left_corrections() -> np.ndarray:
    """A correction the encoder never saw: the bottom-left quarter's classes, the rest unlabelled."""
    _, truth, _ = ihc_tile()
    h, w = truth.shape
    corrections = np.full_like(truth, IGNORE)
    corrections[h // 2:, : w // 2] = truth[h // 2:, : w // 2]
    return corrections


def write_published_maxvit(folder: Path, steps: int = 80, device: str = "cpu") -> Path:
    """Train the encoder for ``steps`` and write it in timm's format into ``folder``; returns the weights path."""
    from safetensors.torch import save_file

    from napari_hires.models import create_model
    from napari_hires.models.published.maxvit import maxvit_tensor_map
    from napari_hires.training import TrainSettings, fine_tune

    image, _, _ = ihc_tile()
    job = fine_tune(image, top_half_labels(), create_model("maxvit_nano_seg", **NANO), settings=TrainSettings(
        steps=steps, batch=4, tile=128, lr=2e-3, holdout=0, bn_batches=4, device=device))
    backbone, cfg = job.model.backbone, job.model.config
    names = maxvit_tensor_map(backbone)
    weights = Path(folder) / "model.safetensors"
    save_file({names[k]: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}, str(weights),
              metadata={"format": "pt"})
    (Path(folder) / "config.json").write_text(json.dumps({"architecture": "maxvit_tiny_tf_224", "model_args": {
        "img_size": [128, 128], "embed_dim": list(cfg.widths), "depths": list(cfg.depths),
        "stem_width": cfg.stem_width, "transformer_dim_head": cfg.head_size}}))
    return weights
