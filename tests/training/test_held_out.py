"""Fine-tuning that shows what it learned, on a real stained tile corrected on its left half: the held-out score
before training, during it and at the end, the best state saved (the model as it was when training only made it
worse), early stopping on a plateau, and the CLI's score lines."""

import argparse

import dask.array as da
import pytest
import torch

from ihc_tile import ihc_tile
from napari_hires.cli.train import add_parser as add_train_parser
from napari_hires.engine.events import drain
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.models import create_model, load_model
from napari_hires.training import TrainSettings, fine_tune, fine_tune_steps, read_patches, train_self_supervised
from napari_hires.training.evaluate import HeldOutDice
from napari_hires.training.split import split_patches

BASE = "hct_tiny_seg.synthetic"
SMALL = TrainSettings(steps=4, batch=2, tile=128, eval_every=2, bn_batches=2, device="cpu")


@pytest.fixture(scope="module")
def tile():
    return ihc_tile()


def test_the_score_is_reported_before_training_and_at_the_end(tile, tmp_path):
    image, _, corrections = tile
    steps = []
    job = drain(fine_tune_steps(image, corrections, BASE, tmp_path / "m", settings=SMALL), steps.append)
    first, last = steps[0].held_out, steps[-1].held_out
    assert first.step == 0 and first.metric == "Dice" and 0 < first.before < 1
    assert not steps[0].evaluated and steps[-1].evaluated and last.step == 4 and last.before == first.before
    assert sorted(job.result.scores) == [0, 2, 4]
    metrics = load_model(job.path).card.metrics["held_out"]
    assert metrics["before"] == round(first.before, 4) and metrics["final"] == round(last.score, 4)
    assert metrics["best"] == round(max(job.result.scores.values()), 4) and metrics["final_step"] == 4
    assert set(metrics["per_class_best"]) <= {"0", "1", "2", "3"}


def test_a_run_that_only_gets_worse_saves_the_model_as_it_was(tile, tmp_path):
    image, _, corrections = tile
    job = fine_tune(image, corrections, BASE, tmp_path / "m", settings=TrainSettings(
        steps=4, batch=2, tile=128, lr=1.0, eval_every=2, bn_batches=2, device="cpu"))  # an absurd learning rate
    assert max(v for step, v in job.result.scores.items() if step) < job.result.scores[0]
    assert "training did not improve the held-out score (Dice" in job.held_out_note
    assert job.held_out_note.endswith("the model was kept as it was")
    base, saved = create_model(BASE).state_dict(), load_model(job.path)
    assert all(torch.equal(base[k], v) for k, v in saved.state_dict().items())
    assert saved.card.metrics["held_out"]["kept_step"] == 0 and not saved.card.metrics["held_out"]["improved"]


def test_the_state_with_the_best_score_is_the_one_saved(tile, tmp_path):
    image, _, corrections = tile
    settings = TrainSettings(steps=10, batch=2, tile=128, lr=1e-9, eval_every=2, patience=0, bn_batches=0,
                             device="cpu")  # only the BatchNorm statistics move, up and then down again
    job = fine_tune(image, corrections, BASE, tmp_path / "m", settings=settings)
    metrics = load_model(job.path).card.metrics["held_out"]
    assert 0 < metrics["best_step"] < metrics["final_step"] == 10 and metrics["best"] > metrics["final"]
    assert metrics["kept_step"] == metrics["best_step"] and f"kept step {metrics['best_step']}" in job.held_out_note
    patches = read_patches(image, corrections, num_classes=4)
    again = HeldOutDice(split_patches(patches, 128, job.model.halo, seed=0), device="cpu")
    assert round(again(load_model(job.path)).value, 4) == metrics["best"]


def test_training_stops_early_when_the_score_stops_rising(tile):
    image, _, _ = tile  # a denoiser that cannot change (a vanishing learning rate, no BatchNorm): a flat score
    settings = TrainSettings(steps=100, batch=2, tile=64, lr=1e-12, eval_every=2, patience=2, device="cpu")
    job = train_self_supervised(image, "maxim_nano.denoise_synthetic", regions=[(0, 256, 0, 256)],
                                settings=settings)
    assert job.result.stopped_early and job.result.steps_done == 6  # evaluated at 2 (a gain), then 4 and 6
    scores = job.result.scores.values()
    assert job.result.held_out.metric == "blind-spot PSNR dB" and max(scores) - min(scores) < 1e-3
    assert "model was kept as it was" in job.held_out_note


def test_the_cli_prints_the_held_out_score_lines(tile, tmp_path, capsys):
    image, _, corrections = tile
    pyr = Pyramid([da.from_array(image)], "yxc", (1.0,) * 3, (0.0,) * 3, name="ihc")
    truth = Pyramid([da.from_array(corrections)], "yx", (1.0,) * 2, (0.0,) * 2, name="corrected", kind="labels")
    store = write_ome_zarr(pyr, tmp_path / "ihc.zarr", labels={"corrected": truth}, chunk=256, progress=False)
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", str(store), f"{store}/labels/corrected", "--model", BASE, "--out",
                              str(tmp_path / "m"), "--steps", "2", "--eval-every", "1", "--batch", "1", "--tile",
                              "128"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("step 0/2  held-out Dice ") and lines[0].endswith("before training")
    assert "held-out Dice" in lines[1] and "at step 1 (before" in lines[1]
    assert lines[2].startswith("step 2/2") and "at step 2 (before" in lines[2]
    summary = lines[-1]
    assert summary.startswith("trained 2 steps") and "; held out " in summary
    assert "before training, best" in summary or "training did not improve the held-out score" in summary
