"""A trained model's card records the pixel size of the image level it learnt from, when the image has one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import load_model, save_model
from napari_hires.models.files import card_for
from napari_hires.models.registry import create_model
from napari_hires.training import TrainSettings, fine_tune, train_self_supervised

ONE_STEP = TrainSettings(steps=1, batch=1, tile=128, device="cpu")


@pytest.fixture(scope="module")
def slide():
    """A 1024 x 1024 synthetic slide and its labels (levels at 0.5, 1 and 2 um/px)."""
    return synthetic_slide((1024, 1024), min_size=256)


def test_fine_tuning_at_level_1_records_that_levels_pixel_size(slide, tmp_path):
    image, truth = slide
    job = fine_tune(image, truth, "hct_tiny_seg", tmp_path / "m", level=1, regions=[(0, 256, 0, 256)],
                    settings=ONE_STEP)
    card = load_model(job.path).card
    assert (card.pixel_size, card.pixel_unit) == (1.0, "micrometer")


def test_fine_tuning_on_an_image_without_pixel_size_records_none_even_if_the_base_had_one(slide, tmp_path):
    image, truth = slide
    base = create_model("hct_tiny_seg")
    save_model(base, tmp_path / "base", card_for(base, pixel_size=0.5, pixel_unit="micrometer"))
    pixels, labels = np.asarray(image.levels[0][:256, :256]), np.asarray(truth.levels[0][:256, :256])
    job = fine_tune(pixels, labels, tmp_path / "base.safetensors", tmp_path / "m", settings=ONE_STEP)
    card = load_model(job.path).card
    assert card.pixel_size is None and card.pixel_unit is None


def test_self_supervised_training_on_a_file_records_its_pixel_size(slide, tmp_path):
    image, _ = slide
    scanned = replace(image, scale=(0.25, 0.25, 1.0), units={"y": "micrometer", "x": "micrometer"},
                      nominal_pixel_size=None)
    path = write_ome_zarr(replace(scanned, levels=scanned.levels[:1]), tmp_path / "scan.zarr")
    job = train_self_supervised(path, out=tmp_path / "m", regions=[(0, 128, 0, 128)], settings=ONE_STEP)
    card = load_model(job.path).card
    assert (card.pixel_size, card.pixel_unit) == (0.25, "micrometer")
