"""Held-out pixels by region: whole cells of the labels, the same for a seed, never touched by a training tile, and
nothing held out (said plainly) when too little is labelled."""

import numpy as np

from ihc_tile import IGNORE, ihc_tile
from napari_hires.geometry import Box
from napari_hires.models import create_model, load_model
from napari_hires.training import TileSampler, TrainSettings, fine_tune
from napari_hires.training.sampling import Patch
from napari_hires.training.split import cell_side, split_patches

TILE, GAP = 128, 10


def test_cells_are_whole_squares_of_the_labelled_half_the_same_for_a_seed():
    image, _, corrections = ihc_tile()
    patch = Patch(image, corrections, (0, 0))
    split = split_patches([patch], TILE, GAP, seed=0)
    side = cell_side(TILE)
    boxes = [c.box for c in split.held_out]
    assert boxes and all(b.y0 % side == 0 and b.x0 % side == 0 and b.shape == (side, side) for b in boxes)
    assert all(b.x1 <= 256 for b in boxes)  # only labelled cells
    assert 0.1 <= split.held / split.labelled <= 0.3
    assert [c.box for c in split_patches([patch], TILE, GAP, seed=0).held_out] == boxes
    assert [c.box for c in split_patches([patch], TILE, GAP, seed=1).held_out] != boxes


def test_no_training_tile_touches_a_held_out_cell_or_its_gap():
    _, _, corrections = ihc_tile()
    h, w = corrections.shape
    where = np.stack(np.mgrid[0:h, 0:w], axis=-1).astype(np.int32)  # each pixel holds its own (y, x)
    split = split_patches([Patch(where, corrections, (0, 0))], TILE, GAP, seed=0)
    kept_out = [Box(c.box.y0 - GAP, c.box.y1 + GAP, c.box.x0 - GAP, c.box.x1 + GAP) for c in split.held_out]
    tiles, classes = TileSampler(split.train, TILE).sample(400, np.random.default_rng(0))
    for tile in tiles:
        placed = Box(int(tile[0, 0, 0]), int(tile[-1, 0, 0]) + 1, int(tile[0, 0, 1]), int(tile[0, -1, 1]) + 1)
        assert placed.shape == (TILE, TILE)
        assert all(placed.intersect(box) is None for box in kept_out), placed
    assert (classes != IGNORE).any(axis=(1, 2)).all()  # and every tile still trains on labels
    for cell in split.held_out:
        assert (split.train[0].labels[cell.box.slices] == IGNORE).all()


def test_too_little_labelled_is_said_and_everything_trains(tmp_path):
    image, _, corrections = ihc_tile()
    scribble = np.full_like(corrections, IGNORE)
    scribble[192:320, 64:192] = corrections[192:320, 64:192]  # four cells of 64 px: five are needed
    job = fine_tune(image, scribble, "hct_tiny_seg.synthetic", tmp_path / "m",
                    settings=TrainSettings(steps=1, batch=1, tile=TILE, device="cpu", bn_batches=1))
    assert job.held_out_note.startswith("too little is labelled to hold any out")
    assert "trained on all of it" in job.held_out_note and job.result.held_out is None
    record = load_model(job.path).card.provenance["data"]["held_out"]
    assert record["held_out_pixels"] == 0 and record["training_pixels"] == record["labelled_pixels"] == 128 * 128


def test_a_model_with_a_wide_halo_still_gets_a_held_out_score(tmp_path):
    """A MaxViT's halo (32 px at P = 4) around 64-px cells would leave more labels unused than held out."""
    image, _, corrections = ihc_tile()
    model = create_model("maxvit_nano_seg", num_classes=4, window_size=4)
    assert model.halo == 32
    job = fine_tune(image, corrections, model, settings=TrainSettings(steps=2, batch=2, tile=TILE, eval_every=2,
                                                                      bn_batches=0, device="cpu"))
    assert sorted(job.result.scores) == [0, 2] and "held out" in job.held_out_note
