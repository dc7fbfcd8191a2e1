"""The shipped demo weights: registered by name, loadable, and as good as their cards say on held-out data."""

import json
from pathlib import Path

import numpy as np
import pytest

from napari_hires.io.synthetic import DEFAULT_SIZE, render_labels, render_region
from napari_hires.models import create_model, list_models
from napari_hires.models.shipped import SHIPPED
from napari_hires.training import evaluate_restoration, mean_dice, predict_box

SEGMENTERS = [n for n, (_, task, _) in SHIPPED.items() if task == "segmentation"]
#: A 512 x 512 part of the held-out region of scripts/train_demo_weights.py (level 0 of the default slide, seed 0).
SEG_BOX = (24576, 25088, 8192, 8704)
DENOISE_BOX = (25088, 25344, 8704, 8960)


def test_shipped_files_are_small_and_registered():
    import napari_hires.models.shipped  # registers the names

    weights = Path(napari_hires.models.shipped.__file__).parents[1] / "weights"
    total = sum((weights / f"{n}.safetensors").stat().st_size for n in SHIPPED)
    assert 0 < total < 6 * 2**20  # a few MB in all
    for name in SHIPPED:
        assert name in list_models()
        card = json.loads((weights / f"{name}.json").read_text())
        assert card["provenance"]["trained_by"] == "scripts/train_demo_weights.py"
        assert card["metrics"]["region"]


@pytest.mark.parametrize("name", SEGMENTERS)
def test_segmenter_reaches_dice_085_on_held_out_region(name):
    model = create_model(name)
    y0, y1, x0, x1 = SEG_BOX
    image = render_region(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0)
    truth = render_labels(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0)
    pred = predict_box(model, image, (0, y1 - y0, 0, x1 - x0), device="cpu")
    assert mean_dice(pred, truth, 4) >= 0.85
    assert model.card.metrics["dice"] >= 0.85


def test_denoiser_gains_4db_at_the_shipped_noise_level():
    model = create_model("maxim_nano_denoise_synthetic")
    y0, y1, x0, x1 = DENOISE_BOX
    noisy = render_region(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0, variant="noisy")
    clean = render_region(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0)
    metrics = evaluate_restoration(model, noisy, clean, (0, y1 - y0, 0, x1 - x0), device="cpu")
    assert metrics["psnr_gain"] >= 4.0
    assert model.card.metrics["psnr_gain"] >= 4.0
    assert np.isfinite(metrics["psnr_after"])
