"""Numbers into and out of the model: every bit depth on the model's own scale, and NaN/Inf as missing pixels.

Real models (the shipped ``*_synthetic`` ones trained on 8-bit images, and small convolutional ones whose halo makes
tiling exact) over the synthetic slide, stored with the engine and read back.
"""

from __future__ import annotations

import copy

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from conftest import ConvNet
from scipy.ndimage import binary_dilation
from tiny_restorer import TinyRestorer

from napari_hires.cli.predict import summary
from napari_hires.engine import Box, TileRunner, plan_prediction, predict
from napari_hires.engine.preview import PreviewService, predict_rectangle
from napari_hires.engine.source import as_source
from napari_hires.errors import HiresError
from napari_hires.io.build_state import MARKER
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.readers import open_image
from napari_hires.io.synthetic import DEFAULT_SIZE, render_region
from napari_hires.models import create_model
from napari_hires.training import TrainSettings, fine_tune, train_self_supervised

#: 256 x 256 px of the shipped models' held-out region: background, epithelium and nuclei in about equal parts.
Y, X, N = 24704, 8320, 256
SEGMENTER = "hct_tiny_seg_synthetic"
DENOISER = "maxim_nano_denoise_synthetic"


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    return render_region(0, Y, Y + N, X, X + N, size=DEFAULT_SIZE, seed=0)


@pytest.fixture(scope="module")
def noisy() -> np.ndarray:
    return render_region(0, Y, Y + N, X, X + N, size=DEFAULT_SIZE, seed=0, variant="noisy")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """predict(image, model) read back from its store (level 0, and all levels), with its result; cached."""
    done: dict = {}

    def run(key: str, image, model: str, **options):
        if key not in done:
            out = tmp_path_factory.mktemp("runs") / f"{key}.zarr"
            result = predict(image, create_model(model), out, device="cpu", **options)
            stored = open_image(out)
            levels = [np.asarray(lv) for lv in stored.levels]
            if stored.axes == "cyx":  # restored RGB of a uint16 or float image: channels last, as the input
                levels = [np.moveaxis(lv, 0, -1) for lv in levels]
            done[key] = levels[0], levels, result
        return done[key]

    return run


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


# ---------------------------------------------------------------------------------------------- bit depth
def test_uint16_rgb_segments_as_its_8bit_original(tissue, runs):
    labels8, _, result8 = runs("seg8", tissue, SEGMENTER)
    labels16, _, result16 = runs("seg16", tissue.astype(np.uint16) * 257, SEGMENTER)
    assert len(np.unique(labels8)) >= 3  # a region with several classes: agreement means something
    assert _agreement(labels16, labels8) >= 0.99
    assert "input uint16 scaled from 0..65535" in summary(result16)
    assert "scaled" not in summary(result8)  # the plain 8-bit case says nothing


def test_float_rgb_in_0_1_segments_as_its_8bit_original(tissue, runs):
    labels8, _, _ = runs("seg8", tissue, SEGMENTER)
    labels_f, _, result = runs("segf", tissue.astype(np.float32) / 255, SEGMENTER)
    assert _agreement(labels_f, labels8) >= 0.99
    assert "float input scaled from 0..1" in summary(result)


def test_uint16_denoising_stays_uint16_within_a_grey_level_of_the_8bit_run(noisy, runs):
    out8, _, _ = runs("den8", noisy, DENOISER)
    out16, _, _ = runs("den16", noisy.astype(np.uint16) * 257, DENOISER)
    assert out8.dtype == np.uint8 and out16.dtype == np.uint16
    diff = np.abs(out16 / 257 - out8)
    assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 1.0
    assert out16.max() > 255 * 100  # on its own 16-bit scale, not left at the 8-bit one


@pytest.fixture(scope="module")
def float_store(tissue, tmp_path_factory):
    """The tissue as float32 in 0..~4000 in an OME-Zarr store whose omero windows are 0..4000."""
    pixels = tissue.astype(np.float32) * (4000 / 255)
    pyramid = Pyramid(levels=[da.from_array(pixels, chunks=(128, 128, 3))], axes="yxc", scale=(1.0, 1.0, 1.0),
                      translation=(0.0, 0.0, 0.0), name="float tissue", contrast_limits=[(0.0, 4000.0)] * 3)
    out = tmp_path_factory.mktemp("float") / "tissue.ome.zarr"
    write_ome_zarr(pyramid, out, chunk=128, derive_levels=True, min_size=64)
    return out


def test_float_image_is_scaled_by_the_contrast_limits_of_its_ome_zarr(tissue, float_store, runs, tmp_path):
    assert open_image(float_store).contrast_limits == [(0.0, 4000.0)] * 3
    labels8, _, _ = runs("seg8", tissue, SEGMENTER)
    labels, _, result = runs("seg-store", str(float_store), SEGMENTER)
    assert _agreement(labels, labels8) >= 0.99
    assert "float input scaled from contrast limits 0.0..4000.0" in summary(result)
    plan_prediction(str(float_store), create_model(SEGMENTER), tmp_path / "planned.zarr").close()
    assert zarr.open_group(str(tmp_path / "planned.zarr")).attrs[MARKER]["run"]["input_range"] == [0.0, 4000.0]


def test_preview_scales_the_image_as_predict_does(tissue, float_store, runs):
    labels8, _, _ = runs("seg8", tissue, SEGMENTER)
    labels, _, _ = runs("seg-store", str(float_store), SEGMENTER)
    with PreviewService(TileRunner(create_model(SEGMENTER), device="cpu"), open_image(float_store)) as service:
        shown = service.request(0, (0, N, 0, N)).result(timeout=120).data
    np.testing.assert_array_equal(shown, labels)
    assert _agreement(shown, labels8) >= 0.99


@pytest.mark.parametrize("pixels, problem", [
    (np.full((64, 64), np.nan, np.float32), "no finite"),
    (np.full((64, 64), 7.0, np.float32), "no contrast"),
])
def test_float_image_with_no_sensible_range_is_refused_with_how_to_convert(pixels, problem, tmp_path):
    with pytest.raises(HiresError, match=problem) as err:
        predict(pixels, TinyRestorer(), tmp_path / "out.zarr", device="cpu")
    assert "convert" in str(err.value)


def _train_settings() -> TrainSettings:
    """Three plain steps on every label: the comparison is of input scaling, and the held-out split's tiles carry
    near-zero gradients whose float32 round-off AdamW's first, sign-like step amplifies to 3e-3 by step 2."""
    return TrainSettings(steps=3, batch=2, tile=64, device="cpu", bn_batches=0, augment=False, holdout=0)


def test_fine_tuning_sees_a_uint16_image_as_its_8bit_original(tissue):
    labels = np.zeros(tissue.shape[:2], np.uint8)  # "background everywhere": any label trains
    losses = [fine_tune(image, labels, create_model(SEGMENTER), settings=_train_settings()).result.losses
              for image in (tissue, tissue.astype(np.uint16) * 257)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


def test_self_supervised_training_sees_a_float_image_as_its_8bit_original(noisy):
    model = create_model(DENOISER)  # its card says 8-bit: 1/255
    losses = [train_self_supervised(image, copy.deepcopy(model), settings=_train_settings()).result.losses
              for image in (noisy, noisy.astype(np.float32) / 255)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)


# ---------------------------------------------------------------------------------------------- NaN and Inf
def _with_holes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with a NaN square (all channels), an Inf line (one channel) and a -Inf pixel; and where they are."""
    holed = image.copy()
    holed[100:140, 150:190] = np.nan
    holed[200, 20:240, 1] = np.inf
    holed[30, 30, 0] = -np.inf
    return holed, ~np.isfinite(holed).all(axis=-1)


def _away(missing: np.ndarray, halo: int) -> np.ndarray:
    """Pixels farther than ``halo`` from every missing one: what the missing pixels cannot reach."""
    return ~binary_dilation(missing, iterations=halo, structure=np.ones((3, 3), bool))


@pytest.fixture(scope="module")
def float_rgb(rgb_image) -> np.ndarray:
    return rgb_image.astype(np.float32) / 255


def _balanced_segmenter(image: np.ndarray) -> ConvNet:
    """A seeded ConvNet whose classes are about equally likely on ``image`` (its last bias evens the mean logits),
    so that its labels vary."""
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():
        logits = model(TileRunner(model, device="cpu").to_input(image[None]))
        model.body[-1].bias -= logits.mean(dim=(0, 2, 3))
    return model


def test_nan_and_inf_are_background_for_a_segmenter_and_go_no_further(float_rgb, tmp_path):
    model = _balanced_segmenter(float_rgb)
    holed, missing = _with_holes(float_rgb)
    options = dict(tile=128, chunk=128, device="cpu", probabilities=True)
    predict(float_rgb, model, tmp_path / "clean.zarr", **options)
    predict(holed, model, tmp_path / "holed.zarr", **options)
    clean, out = zarr.open_group(str(tmp_path / "clean.zarr")), zarr.open_group(str(tmp_path / "holed.zarr"))
    labels, probs = out["0"][...], out["probabilities/0"][...]
    assert len(np.unique(clean["0"][...])) >= 3
    away = _away(missing, model.halo)
    np.testing.assert_array_equal(labels[away], clean["0"][...][away])
    assert (labels[missing] == 0).all()
    assert (probs[:, missing] == 0).all()
    for k in range(len(out["probabilities"])):  # every level of the probabilities: no NaN spread by averaging
        assert np.isfinite(out[f"probabilities/{k}"][...]).all()


def test_nan_square_does_not_turn_a_trained_segmenter_to_background(tissue, runs):
    clean, _, _ = runs("segf", tissue.astype(np.float32) / 255, SEGMENTER)
    holed, missing = _with_holes(tissue.astype(np.float32) / 255)
    labels, _, _ = runs("seg-holed", holed, SEGMENTER)
    away = _away(missing, create_model(SEGMENTER).halo)
    assert _agreement(labels[away], clean[away]) >= 0.99  # attention sees the fill a little: not exact
    assert (labels[missing] == 0).all()


def test_denoiser_output_has_no_nan_or_inf_and_matches_the_clean_run_away_from_them(float_rgb, tmp_path):
    holed, missing = _with_holes(float_rgb)
    options = dict(tile=128, chunk=128, device="cpu")
    predict(float_rgb, TinyRestorer(), tmp_path / "clean.zarr", **options)
    predict(holed, TinyRestorer(), tmp_path / "holed.zarr", **options)
    clean, out = open_image(tmp_path / "clean.zarr"), open_image(tmp_path / "holed.zarr")
    for level in out.levels:
        assert np.isfinite(np.asarray(level)).all()
    restored, expected = (np.moveaxis(np.asarray(p.levels[0]), 0, -1) for p in (out, clean))  # stored (c, y, x)
    away = _away(missing, TinyRestorer.halo)
    np.testing.assert_allclose(restored[away], expected[away], atol=1e-5)
    assert (restored[missing] == 0).all()
    # the preview of the same image gives the same pixels
    pyramid = Pyramid(levels=[da.from_array(holed, chunks=(128, 128, 3))], axes="yxc", scale=(1.0,) * 3,
                      translation=(0.0,) * 3)
    with PreviewService(TileRunner(TinyRestorer(), device="cpu"), pyramid) as service:
        shown = service.request(0, (60, 260, 100, 300)).result(timeout=60).data
    assert np.isfinite(shown).all()
    np.testing.assert_allclose(shown, restored[60:260, 100:300], atol=1e-5)


def test_trained_denoiser_keeps_nan_to_the_missing_pixels(noisy, runs):
    holed, missing = _with_holes(noisy.astype(np.float32) / 255)
    clean, _, _ = runs("den-float", noisy.astype(np.float32) / 255, DENOISER)
    out, levels, _ = runs("den-holed", holed, DENOISER)
    assert all(np.isfinite(lv).all() for lv in levels)
    away = _away(missing, create_model(DENOISER).halo)
    assert np.abs(out[away] - clean[away]).mean() < 1 / 255  # under a grey level: global mixing sees the fill
    assert (out[missing] == 0).all()


def test_heatmap_pixels_of_missing_cells_are_zero_and_others_untouched(float_rgb, tmp_path):
    torch.manual_seed(0)
    model = ConvNet("classification").eval()
    holed, missing = _with_holes(float_rgb)
    options = dict(tile=32, overlap=16, device="cpu")
    predict(float_rgb, model, tmp_path / "clean.zarr", **options)
    predict(holed, model, tmp_path / "holed.zarr", **options)
    clean = zarr.open_group(str(tmp_path / "clean.zarr"))["0"][...].astype(np.float32)
    heat = zarr.open_group(str(tmp_path / "holed.zarr"))["0"][...].astype(np.float32)
    assert np.isfinite(heat).all()
    s, t = 16, 32
    rows, cols = heat.shape[1:]
    blank = 0
    for r in range(rows):
        for c in range(cols):
            cell = missing[r * s:(r + 1) * s, c * s:(c + 1) * s]
            y0, x0 = r * s + s // 2 - t // 2, c * s + s // 2 - t // 2
            tile = missing[max(0, y0):max(0, y0 + t), max(0, x0):max(0, x0 + t)]
            if cell.size and cell.mean() >= 0.5:
                assert (heat[:, r, c] == 0).all()
                blank += 1
            elif not tile.any():
                np.testing.assert_allclose(heat[:, r, c], clean[:, r, c], atol=2e-3)
    assert blank >= 4
    # the preview's heatmap of the same image is the same
    runner = TileRunner(model, device="cpu")
    source = as_source(holed)
    shown = predict_rectangle(runner, source, Box(0, 256, 0, 256), layout=_layout(model, t, t - s))
    np.testing.assert_allclose(shown.astype(np.float32), heat[:, :16, :16], atol=2e-3)


def _layout(model, tile: int, overlap: int):
    from napari_hires.engine.tiling import layout_for

    return layout_for(model, tile, overlap)
