"""Fine-tuning from an imported MaxViT encoder beats the same fine-tuning from random initialisation at equal steps.

The published checkpoint is made the way one is made (``tests/published_encoder.py``): a MaxViT trained on the top
half of a real tile, its backbone written as timm writes it. The product imports it through its converter as the
encoder of a new segmenter, fine-tuned on a correction in the bottom half; the held-out Dice (cells of that
correction no training tile touches) is compared with a random start's at the same steps.
"""

from __future__ import annotations

import pytest

from ihc_tile import ihc_tile
from napari_hires.models import create_model
from napari_hires.training import TrainSettings, fine_tune
from published_encoder import NANO, bottom_left_corrections, write_published_maxvit


@pytest.fixture(scope="module")
def published_encoder(tmp_path_factory):
    return write_published_maxvit(tmp_path_factory.mktemp("hub"))


def _best_held_out(model) -> float:
    image, _, _ = ihc_tile()
    job = fine_tune(image, bottom_left_corrections(), model, settings=TrainSettings(
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
