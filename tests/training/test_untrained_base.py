"""Fine-tuning says plainly when the model it started from had no trained weights: in the job, the card and the CLI."""

import argparse

import dask.array as da
import numpy as np
import pytest

from napari_hires.cli.train import add_parser as add_train_parser
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.models import load_model
from napari_hires.training import TrainSettings, fine_tune

ONE_STEP = TrainSettings(steps=1, batch=1, tile=128, device="cpu")


@pytest.fixture(scope="module")
def labelled():
    """A random 128 x 128 RGB image, its left half labelled 0 and its right half 1 (every pixel labelled)."""
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    labels = np.zeros((128, 128), np.uint8)
    labels[:, 64:] = 1
    return image, labels


def test_fine_tuning_an_untrained_architecture_says_it_started_from_random_weights(labelled, tmp_path):
    job = fine_tune(*labelled, "hct_tiny_seg", tmp_path / "m", settings=ONE_STEP)
    assert job.base_note.startswith("hct_tiny_seg has no trained weights") and "random" in job.base_note
    assert load_model(job.path).card.provenance["base_trained"] is False


def test_fine_tuning_trained_weights_has_nothing_to_say(labelled, tmp_path):
    job = fine_tune(*labelled, "hct_tiny_seg.synthetic", tmp_path / "m", settings=ONE_STEP)
    assert job.base_note == "" and load_model(job.path).card.provenance["base_trained"] is True


def test_the_cli_summary_says_the_base_had_no_trained_weights(labelled, tmp_path, capsys):
    image, labels = labelled
    pyr = Pyramid([da.from_array(image)], "yxc", (1.0,) * 3, (0.0,) * 3, name="random")
    truth = Pyramid([da.from_array(labels)], "yx", (1.0,) * 2, (0.0,) * 2, name="truth", kind="labels")
    store = write_ome_zarr(pyr, tmp_path / "in.zarr", labels={"truth": truth}, chunk=128, progress=False)
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", str(store), f"{store}/labels/truth", "--model", "hct_tiny_seg", "--out",
                              str(tmp_path / "m"), "--steps", "1", "--batch", "1", "--tile", "128", "--quiet"])
    assert args.func(args) == 0
    (summary,) = capsys.readouterr().out.strip().splitlines()
    assert "wrote" in summary and "hct_tiny_seg has no trained weights" in summary
