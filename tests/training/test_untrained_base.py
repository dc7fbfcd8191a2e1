"""Fine-tuning says plainly when the model it starts from has no trained weights."""

import warnings

import numpy as np
import pytest

from napari_hires.errors import UntrainedModelWarning
from napari_hires.training import TrainSettings, fine_tune

ONE_STEP = TrainSettings(steps=1, batch=1, tile=128, device="cpu")


def _labelled_image() -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    labels = np.zeros((128, 128), np.uint8)
    labels[:, 64:] = 1  # two classes, every pixel labelled
    return image, labels


def test_fine_tuning_an_untrained_architecture_warns_that_it_starts_from_random_weights():
    image, labels = _labelled_image()
    with pytest.warns(UntrainedModelWarning, match=r"hct_tiny_seg has no trained weights.*random"):
        fine_tune(image, labels, "hct_tiny_seg", settings=ONE_STEP)


def test_fine_tuning_trained_weights_does_not_warn():
    image, labels = _labelled_image()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UntrainedModelWarning)
        fine_tune(image, labels, "hct_tiny_seg.synthetic", settings=ONE_STEP)
