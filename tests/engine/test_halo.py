"""Measured halos: exact for convolutions, stored in the shipped cards, and seam-free tiling with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_hires.engine import Box, TileLayout, TileRunner
from napari_hires.engine.halo import measure_halo
from napari_hires.engine.tiling import layout_for
from napari_hires.errors import HiresError
from napari_hires.io.synthetic import DEFAULT_SIZE, render_region
from napari_hires.models import create_model
from conftest import ConvNet

#: A held-out 1024 x 1024 region of the default slide (scripts/train_demo_weights.py, HALO_REGIONS).
REGION = (28672, 28672 + 1024, 40960, 40960 + 1024)
SHIPPED = ["hct_tiny_seg_synthetic", "maxvit_nano_seg_synthetic", "xt_nano_seg_synthetic",
           "maxim_nano_denoise_synthetic"]


def _region(variant: str = "clean") -> np.ndarray:
    y0, y1, x0, x1 = REGION
    return render_region(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0, variant=variant)


def _tiled(model, image: np.ndarray, layout: TileLayout) -> torch.Tensor:
    bounds = Box(0, image.shape[0], 0, image.shape[1])
    return TileRunner(model, device="cpu").predict_region(image, bounds, bounds, layout)[0]


def test_a_convolution_measures_at_most_its_receptive_radius_and_is_exact_beyond(conv_model, rgb_image):
    found = measure_halo(conv_model, [rgb_image[:, :300]], tile=128, tolerance=1e-6, device="cpu")
    assert 0 < found.halo <= 6  # six 3x3 convolutions
    assert found.floor < 1e-6
    assert max(found.profile[found.halo:]) <= found.tolerance
    assert max(found.profile[:found.halo]) > found.tolerance
    assert found.label_agreement == 1.0


def test_halo_needs_images_of_two_tiles_and_a_dense_model(conv_model, rgb_image):
    with pytest.raises(HiresError, match="at least 2 tiles"):
        measure_halo(conv_model, [rgb_image[:200, :200]], tile=128, device="cpu")
    with pytest.raises(HiresError, match="classifier"):
        measure_halo(ConvNet(task="classification"), [rgb_image], device="cpu")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_cards_carry_a_measured_halo_and_overlap_under_a_quarter_tile(name):
    model = create_model(name)
    measured = model.card.metrics["halo"]
    assert model.halo == model.card.halo == measured["halo"]
    assert "measured" in model.card.tiling
    layout = layout_for(model)
    assert layout.overlap < layout.tile / 4  # MONAI's default overlap is a quarter tile


def _jump_ratio(out: torch.Tensor, axis: int, window: int = 16) -> np.ndarray:
    """Per row (axis 1) or column (axis 2): the mean jump to the next one, over the median of its neighbours'."""
    jumps = (out.narrow(axis, 1, out.shape[axis] - 1) - out.narrow(axis, 0, out.shape[axis] - 1)).abs().amax(0)
    jumps = jumps.mean(2 - axis).numpy()
    ratio = np.zeros_like(jumps)
    for i in range(len(jumps)):
        near = np.concatenate([jumps[max(0, i - window):i], jumps[i + 1:i + 1 + window]])
        ratio[i] = jumps[i] / max(float(np.median(near)), 1e-6)
    return ratio


def test_attention_model_with_its_measured_halo_shows_no_seam():
    """HCT's Performer sees the whole tile: neighbouring tiles disagree, and the cross-fade must hide it."""
    model = create_model("hct_tiny_seg_synthetic")
    image = _region()
    control = _tiled(model, image, TileLayout(512, 0, 0))  # tiles side by side: the seam is at 511/512
    assert _jump_ratio(control, 1)[511] > 5
    tiled = _tiled(model, image, layout_for(model))
    for axis in (1, 2):
        assert _jump_ratio(tiled, axis).max() < 3  # no row or column jumps out of its neighbourhood


def test_trained_maxim_tiles_match_the_whole_image_within_a_grey_level():
    """MAXIM's grid gMLP mixes the whole tile, so tiled output differs from whole-image output by a stated amount:
    under half a grey level on average and a few at worst, where tiles without overlap are off by tens."""
    model = create_model("maxim_nano_denoise_synthetic")
    image = _region("noisy")
    whole = TileRunner(model, device="cpu").run_batch(image[None])[0]
    tiled = (_tiled(model, image, layout_for(model)) - whole).abs()
    assert tiled.mean() < 0.5 and tiled.max() < 8
    side_by_side = (_tiled(model, image, TileLayout(512, 0, 0)) - whole).abs()
    assert side_by_side.max() > 20
