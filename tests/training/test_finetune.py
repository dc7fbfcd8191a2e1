"""Fine-tuning on one corrected region of an unseen slide raises Dice on a held-out region of that slide."""

import numpy as np

import napari_hires.models.shipped  # noqa: F401  (registers the shipped weights)
from napari_hires.io.synthetic import render_labels, render_region
from napari_hires.models import create_model
from napari_hires.training import TrainSettings, fine_tune, mean_dice, predict_box

SIZE = (4096, 4096)
SEED = 7
CORRECTED = (3072, 3584, 1536, 2048)  # the window a user corrected
HELD_OUT = (2304, 2688, 2304, 2688)  # elsewhere on the same slide


def _restain(rgb: np.ndarray) -> np.ndarray:
    """Another scanner and stain: channels mixed and darkened, as the shipped model never saw."""
    mix = np.array([[0.75, 0.15, 0.0], [0.1, 0.6, 0.1], [0.0, 0.2, 0.9]], np.float32)
    return np.clip(rgb.astype(np.float32) @ mix.T * 0.9 + 10, 0, 255).astype(np.uint8)


def _region(box):
    y0, y1, x0, x1 = box
    return (_restain(render_region(0, y0, y1, x0, x1, size=SIZE, seed=SEED)),
            render_labels(0, y0, y1, x0, x1, size=SIZE, seed=SEED))


def test_fine_tuning_on_corrections_raises_dice_on_held_out_region():
    held_image, held_truth = _region(HELD_OUT)
    model = create_model("hct_tiny_seg_synthetic")
    box = (0, held_image.shape[0], 0, held_image.shape[1])
    before = mean_dice(predict_box(model, held_image, box, device="cpu"), held_truth, 4)

    image, truth = _region(CORRECTED)  # the corrected window, as an image and fully labelled window
    job = fine_tune(image, truth, model, settings=TrainSettings(steps=40, batch=4, tile=128, lr=1e-3, device="cpu"))
    after = mean_dice(predict_box(job.model, held_image, box, device="cpu"), held_truth, 4)
    assert after > before + 0.05, (before, after)
