"""One set of run options: frozen, ``None`` resolved in one place to the model's layout and the device's batch, the
same from the API and from ``napari-hires predict``; invalid values refused before any store is made."""

from __future__ import annotations

import dataclasses

import pytest

from napari_hires.cli.main import build_parser
from napari_hires.cli.predict import run_options
from napari_hires.engine import RunOptions, auto_batch
from napari_hires.engine.tiling import layout_for, output_grid
from napari_hires.errors import HiresError
from napari_hires.models import create_model


def test_run_options_are_frozen():
    options = RunOptions(tile=256)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.tile = 512  # type: ignore[misc]


def test_none_resolves_to_the_models_layout_and_the_devices_batch(conv_model):
    resolved = RunOptions(device="cpu").resolved(conv_model)
    layout = layout_for(conv_model)
    assert resolved.layout == layout and resolved.layout.tile == conv_model.tile_size
    assert (resolved.chunk, resolved.block, resolved.factor) == output_grid(layout, conv_model.task, 512)
    assert resolved.batch == auto_batch("cpu") == 2 and resolved.device == "cpu"


def test_set_values_are_kept_when_resolved(conv_model):
    resolved = RunOptions(tile=64, overlap=16, batch=3, block=1024, device="cpu").resolved(conv_model)
    assert (resolved.layout.tile, resolved.layout.overlap, resolved.batch, resolved.block) == (64, 16, 3, 1024)


def test_keywords_become_options_in_one_place():
    assert RunOptions.of(tile=64, batch=3) == RunOptions(tile=64, batch=3)
    assert RunOptions.of(RunOptions(tile=64), batch=3) == RunOptions(tile=64, batch=3)
    with pytest.raises(TypeError, match="unknown run option.*tiles"):
        RunOptions.of(tiles=64)


@pytest.mark.parametrize("field, value", [("batch", 0), ("tile", 0), ("chunk", -1), ("overlap", -1)])
def test_invalid_options_are_one_clear_error(field, value):
    with pytest.raises(HiresError, match=f"{field} must be"):
        RunOptions.of(**{field: value})


def test_the_cli_without_flags_gives_the_api_defaults():
    args = build_parser().parse_args(["predict", "in.zarr", "out.zarr", "--model", "hct_tiny_seg"])
    assert run_options(args) == RunOptions()


def test_the_cli_flags_give_the_same_options_as_the_keywords():
    args = build_parser().parse_args(["predict", "in.zarr", "out.zarr", "--model", "hct_tiny_seg", "--tile", "256",
                                      "--batch", "3", "--device", "cpu", "--probabilities"])
    assert run_options(args) == RunOptions.of(tile=256, batch=3, device="cpu", probabilities=True)


def test_the_cli_without_a_tile_uses_the_models_tile():
    net = create_model("xt_nano_seg")
    args = build_parser().parse_args(["predict", "in.zarr", "out.zarr", "--model", "xt_nano_seg"])
    assert run_options(args).resolved(net).layout.tile == net.tile_size


def test_the_live_preview_runs_one_tile_per_batch_on_a_cpu():
    assert auto_batch("cpu", preview=True) == 1 and auto_batch("cpu") == 2
