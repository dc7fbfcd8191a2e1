"""A model runs on the pyramid level whose pixel size matches its card's, says so, and warns when none does."""

from __future__ import annotations

import warnings
from dataclasses import replace

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_hires.cli.predict import summary
from napari_hires.engine import plan_prediction, predict
from napari_hires.errors import HiresWarning, LevelChosenWarning, ResolutionMismatchWarning
from napari_hires.io.physical import PixelSize
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import create_model
from napari_hires.models.files import card_for

SETTINGS = dict(tile=128, overlap=32, device="cpu")


@pytest.fixture(scope="module")
def slide() -> Pyramid:
    """1024 x 1024 synthetic slide: levels at 0.5, 1 and 2 um/px."""
    image, _ = synthetic_slide((1024, 1024), min_size=256)
    return image


def _model(size: float | None, unit: str = "micrometer"):
    torch.manual_seed(0)
    net = create_model("hct_tiny_seg")
    net.card = card_for(net, pixel_size=size, pixel_unit=unit if size is not None else None)
    return net


def _resolution_warnings(record) -> list[warnings.WarningMessage]:
    return [w for w in record if issubclass(w.category, (ResolutionMismatchWarning, LevelChosenWarning))]


def test_predict_runs_on_the_level_matching_the_models_pixel_size_and_says_so(slide, tmp_path):
    with pytest.warns(LevelChosenWarning, match=r"model trained at 1.00 um/px; running on level 1 \(1.00 um/px\)"):
        result = predict(slide, _model(1.0), tmp_path / "out.zarr", region=(0, 256, 0, 256), **SETTINGS)
    assert result.level == 1
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["0"].shape == (512, 512)
    assert summary(result).endswith("; model trained at 1.00 um/px; running on level 1 (1.00 um/px) of the image")


def test_a_level_0_region_is_scaled_to_the_level_chosen(slide, tmp_path):
    with pytest.warns(LevelChosenWarning):
        plan = plan_prediction(slide, _model(2.0), tmp_path / "out.zarr", region=(100, 300, 0, 1024), **SETTINGS)
    plan.close()
    assert plan.resolution.level == 2 and plan.region == (25, 75, 0, 256)


def test_a_level_within_25_percent_matches_without_warning(slide, tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plan = plan_prediction(slide, _model(0.6), tmp_path / "out.zarr", **SETTINGS)
    plan.close()
    assert plan.resolution.level == 0 and plan.resolution.note.startswith("model trained at 0.60 um/px")
    assert not _resolution_warnings(record)


def test_twice_the_models_pixel_size_with_no_matching_level_warns(tmp_path):
    """A single-level image at 0.5 um/px and a model trained at 1 um/px: run on it, warning with both sizes."""
    pixels = np.zeros((256, 256, 3), np.uint8)
    image = Pyramid(levels=[da.from_array(pixels)], axes="yxc", scale=(0.5, 0.5, 1.0), translation=(0.0,) * 3,
                    units={"y": "micrometer", "x": "micrometer"}, name="scan")
    with pytest.warns(ResolutionMismatchWarning, match=r"model trained at 1.00 um/px, but no level of scan is "
                                                       r"within 25% of it \(level 0 0.50 um/px\).*2x finer.*Resample"):
        plan = plan_prediction(image, _model(1.0), tmp_path / "out.zarr", **SETTINGS)
    plan.close()
    assert plan.resolution.level == 0


def test_an_explicit_level_wins_but_warns_of_its_mismatch(slide, tmp_path):
    with pytest.warns(ResolutionMismatchWarning, match=r"level 0 of synthetic slide is 0.50 um/px, 2x finer.*"
                                                       r"leave the level automatic \(level 1, 1.00 um/px\)"):
        plan = plan_prediction(slide, _model(1.0), tmp_path / "out.zarr", level=0, **SETTINGS)
    plan.close()
    assert plan.resolution.level == 0 and plan.source.shape == (1024, 1024)


@pytest.mark.parametrize("side", ["model", "image"])
def test_without_a_pixel_size_on_either_side_level_0_runs_and_nothing_is_said(slide, tmp_path, side):
    net, image = (_model(None), slide) if side == "model" else (_model(1.0), replace(slide, nominal_pixel_size=None))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        plan = plan_prediction(image, net, tmp_path / "out.zarr", **SETTINGS)
    plan.close()
    assert plan.resolution.level == 0 and plan.resolution.note == ""
    assert not [w for w in record if issubclass(w.category, HiresWarning)]


def test_a_microscopy_model_on_a_satellite_image_warns(tmp_path):
    pixels = np.zeros((256, 256), np.uint8)
    image = Pyramid(levels=[da.from_array(pixels)], axes="yx", scale=(1.0, 1.0), translation=(0.0, 0.0),
                    nominal_pixel_size=PixelSize(10.0, "meter"), name="field")
    net = create_model("hct_tiny_seg", in_channels=1)
    net.card = card_for(net, pixel_size=0.5, pixel_unit="micrometer")
    with pytest.warns(ResolutionMismatchWarning, match=r"model trained at 0.50 um/px.*level 0 10 m/px"):
        plan_prediction(image, net, tmp_path / "out.zarr", **SETTINGS).close()


def test_cli_picks_the_level_without_level_flag_and_says_so(slide, tmp_path, capsys):
    from napari_hires import cli
    from napari_hires.io.ome_zarr_writer import write_ome_zarr
    from napari_hires.models import save_model

    scanned = replace(slide, scale=(0.5, 0.5, 1.0), units={"y": "micrometer", "x": "micrometer"},
                      nominal_pixel_size=None)
    image = write_ome_zarr(scanned, tmp_path / "scan.zarr")
    net = _model(1.0)
    model = str(save_model(net, tmp_path / "at1um.safetensors", net.card))
    out = str(tmp_path / "out.zarr")
    assert cli.main(["predict", image, out, "--model", model, "--region", "0", "256", "0", "256", "--tile", "128",
                     "--overlap", "32", "--device", "cpu", "--quiet"]) == 0
    said = capsys.readouterr()
    assert "warning: model trained at 1.00 um/px; running on level 1 (1.00 um/px) of the image" in said.err
    assert said.out.strip().endswith("running on level 1 (1.00 um/px) of the image")
    assert zarr.open_group(out, mode="r")["0"].shape == (512, 512)
