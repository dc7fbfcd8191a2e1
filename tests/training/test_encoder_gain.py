"""Fine-tuning from an imported MaxViT encoder beats the same fine-tuning from random initialisation at equal steps.

No ImageNet weights can be downloaded here, so the published checkpoint is made the way one is made: a MaxViT is
trained (on the top half of skimage's immunohistochemistry tile, every pixel labelled by colour deconvolution) and
its backbone written as timm writes it (timm names, a Hugging Face config.json). The product imports it through its
converter as the encoder of a new segmenter, which is fine-tuned on a small correction in the bottom half; the
held-out Dice (cells of that correction no training tile touches) is compared with a random start's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import save_file

from ihc_tile import IGNORE, ihc_tile
from napari_hires.models import create_model
from napari_hires.models.published.maxvit import maxvit_tensor_map
from napari_hires.training import TrainSettings, fine_tune

NANO = {"num_classes": 4, "window_size": 4}  # 128-px windows of 4 x 4 tokens at stride 32


@pytest.fixture(scope="module")
def published_encoder(tmp_path_factory):
    """A timm-format MaxViT checkpoint (model.safetensors + config.json) trained on the tile's top half."""
    image, truth, _ = ihc_tile()
    top = np.full_like(truth, IGNORE)
    top[:256] = truth[:256]
    job = fine_tune(image, top, create_model("maxvit_nano_seg", **NANO), settings=TrainSettings(
        steps=80, batch=4, tile=128, lr=2e-3, holdout=0, bn_batches=4, device="cpu"))
    backbone = job.model.backbone
    names = maxvit_tensor_map(backbone)
    folder = tmp_path_factory.mktemp("hub")
    save_file({names[k]: v.contiguous() for k, v in backbone.state_dict().items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    cfg = job.model.config
    (folder / "config.json").write_text(json.dumps({"architecture": "maxvit_tiny_tf_224", "model_args": {
        "img_size": [128, 128], "embed_dim": list(cfg.widths), "depths": list(cfg.depths),
        "stem_width": cfg.stem_width, "transformer_dim_head": cfg.head_size}}))
    return folder / "model.safetensors"


def _best_held_out(model) -> float:
    image, truth, _ = ihc_tile()
    corrections = np.full_like(truth, IGNORE)
    corrections[256:, :256] = truth[256:, :256]  # a correction the encoder never saw
    job = fine_tune(image, corrections, model, settings=TrainSettings(
        steps=10, batch=4, tile=128, lr=1e-3, eval_every=5, patience=0, bn_batches=4, device="cpu"))
    assert sorted(job.result.scores) == [0, 5, 10]
    return max(v for step, v in job.result.scores.items() if step)


def test_an_imported_maxvit_encoder_beats_random_initialisation_at_equal_steps(published_encoder):
    pretrained = create_model("maxvit_nano_seg", encoder=published_encoder, num_classes=4)
    assert pretrained.encoder["imported_from"]["family"] == "maxvit"
    assert pretrained.config.window_size == 4 and pretrained.config.padding == "same"
    from_encoder = _best_held_out(pretrained)
    from_random = _best_held_out(create_model("maxvit_nano_seg", **NANO))
    assert from_encoder > from_random + 0.05, (from_encoder, from_random)
