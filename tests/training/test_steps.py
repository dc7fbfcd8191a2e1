"""Training as a generator of steps: each step yielded in order as it happens, the result returned, the same
numbers as the callback API; the fine-tuning job likewise, saving its model file at the end. One frozen set of
settings whose defaults the CLI keeps."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from napari_hires.cli.main import build_parser
from napari_hires.cli.train import train_settings
from napari_hires.engine.events import drain
from napari_hires.io.synthetic import render_labels, render_region, synthetic_slide
from napari_hires.models import create_model, load_model
from napari_hires.training import (
    StepInfo,
    TileSampler,
    TrainSettings,
    fine_tune_steps,
    segmentation_objective,
    train,
    training_steps,
)
from napari_hires.training.sampling import Patch, to_classes

SIZE = (2048, 2048)
SETTINGS = TrainSettings(steps=4, batch=2, tile=64, warmup=1, augment=False, device="cpu", bn_batches=0)


def _sampler() -> TileSampler:
    image = render_region(0, 700, 828, 900, 1028, size=SIZE, seed=1)
    labels = render_labels(0, 700, 828, 900, 1028, size=SIZE, seed=1)
    return TileSampler([Patch(image, to_classes(labels, 4), (0, 0))], 64)


def _run(steps):
    """The events a run's generator yields, in order, and what it returns (drained as predict drains it)."""
    events = []
    return events, drain(steps, events.append)


def test_each_step_is_yielded_in_order_and_the_result_returned():
    torch.manual_seed(0)
    model = create_model("hct_tiny_seg")
    steps, result = _run(training_steps(model, _sampler(), segmentation_objective(), SETTINGS))
    assert all(isinstance(s, StepInfo) for s in steps) and [s.step for s in steps] == [1, 2, 3, 4]
    assert result.losses == [s.loss for s in steps] and not result.cancelled


def test_the_generator_trains_as_the_callback_api_does():
    """On the CPU, the same seed gives the same losses and weights whichever way the steps are consumed."""
    runs = []
    for drive in ("generator", "callback"):
        torch.manual_seed(0)
        model = create_model("hct_tiny_seg")
        if drive == "generator":
            _, result = _run(training_steps(model, _sampler(), segmentation_objective(), SETTINGS))
        else:
            result = train(model, _sampler(), segmentation_objective(), SETTINGS)
        runs.append((result.losses, model.state_dict()))
    (losses_a, state_a), (losses_b, state_b) = runs
    assert losses_a == losses_b
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)


def test_fine_tune_steps_yield_steps_then_save_the_model(tmp_path):
    image, truth = synthetic_slide(SIZE, seed=1)
    steps, job = _run(fine_tune_steps(image, truth, "hct_tiny_seg", tmp_path / "tuned",
                                      regions=[(512, 640, 512, 640)], settings=SETTINGS))
    assert [s.step for s in steps] == [1, 2, 3, 4]
    assert job.result.steps_done == 4 and load_model(job.path).card.provenance["settings"]["steps_done"] == 4


def test_train_settings_are_frozen_and_the_cli_defaults_are_theirs():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainSettings().steps = 1  # type: ignore[misc]
    args = build_parser().parse_args(["train", "img.zarr", "labels.zarr", "--model", "hct_tiny_seg", "--out", "m"])
    assert train_settings(args) == TrainSettings()
    args = build_parser().parse_args(["train", "img.zarr", "--self-supervised", "--out", "m", "--steps", "5",
                                      "--batch", "2"])
    assert train_settings(args) == TrainSettings(steps=5, batch=2)
