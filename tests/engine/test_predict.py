"""The engine end to end: seam-free tiling, stores and their pyramids, scope, cancel and resume, clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zarr
from conftest import ConvNet

from napari_hires.engine import Box, CancelToken, TileLayout, TileRunner, plan_prediction, predict
from napari_hires.engine.tiling import layout_for
from napari_hires.errors import HiresError, ImageReadError, OutputExistsError
from napari_hires.io.build_state import MARKER
from napari_hires.io.downsample import downsample_mean, downsample_mode
from napari_hires.io.readers import open_image
from napari_hires.models import create_model
from napari_hires.models.files import card_for


def _whole(model, image: np.ndarray) -> torch.Tensor:
    """The model on the whole image at once: what tiling must reproduce."""
    runner = TileRunner(model, device="cpu")
    return runner.run_batch(image[None])[0]


@pytest.mark.parametrize("tile", [64, 100])
def test_tiled_equals_whole_image_for_a_convolutional_model(conv_model, rgb_image, tile):
    runner = TileRunner(conv_model, device="cpu", batch=3)
    bounds = Box(0, rgb_image.shape[0], 0, rgb_image.shape[1])
    layout = TileLayout.for_model(tile, conv_model.halo, None, 1)
    tiled, n = runner.predict_region(rgb_image, bounds, bounds, layout)
    assert n > 6 and layout.margin == conv_model.halo
    assert (tiled - _whole(conv_model, rgb_image)).abs().max() < 1e-4


def test_stretched_tiles_give_the_same_result_from_fewer_tile_pixels(conv_model, rgb_image):
    """A model that tiles exactly may stretch its tiles to fit a region: same output, less work."""
    bounds = Box(0, rgb_image.shape[0], 0, rgb_image.shape[1])
    fixed = TileLayout.for_model(100, conv_model.halo, None, 4, conv_model.receptive_field)
    stretched = TileLayout.for_model(100, conv_model.halo, None, 4, conv_model.receptive_field, stretch=True)
    assert stretched.max_tile == 128 and fixed.max_tile == 100
    runs = []
    for layout in (fixed, stretched):
        runner = TileRunner(conv_model, device="cpu", batch=3)
        runs.append((runner.predict_region(rgb_image, bounds, bounds, layout)[0], runner.tile_pixels))
    (out_fixed, px_fixed), (out_stretched, px_stretched) = runs
    assert px_stretched < px_fixed
    assert (out_stretched - _whole(conv_model, rgb_image)).abs().max() < 1e-4
    assert (out_fixed - out_stretched).abs().max() < 1e-4
    attention = TileLayout.for_model(100, 6, None, 4, receptive_field=100, stretch=True)
    assert attention.max_tile == attention.tile  # its output depends on the tile: never stretched


def test_tiles_without_context_margin_show_seams(conv_model, rgb_image):
    runner = TileRunner(conv_model, device="cpu")
    bounds = Box(0, rgb_image.shape[0], 0, rgb_image.shape[1])
    no_margin = TileLayout(tile=64, margin=0, blend=0)
    tiled, _ = runner.predict_region(rgb_image, bounds, bounds, no_margin)
    assert (tiled - _whole(conv_model, rgb_image)).abs().max() > 1e-3


def test_store_holds_argmax_labels_probabilities_and_a_pyramid(conv_model, rgb_image, tmp_path):
    result = predict(rgb_image, conv_model, tmp_path / "seg.zarr", tile=100, chunk=64, block=128, probabilities=True,
                     device="cpu")
    whole = _whole(conv_model, rgb_image)
    root = zarr.open_group(tmp_path / "seg.zarr", mode="r")
    np.testing.assert_array_equal(root["0"][:], whole.argmax(0).numpy())
    probs = zarr.open_group(tmp_path / "seg.zarr" / "probabilities", mode="r")["0"][:]
    assert probs.dtype == np.float16 and np.abs(probs - whole.numpy()).max() < 2e-3
    np.testing.assert_array_equal(root["1"][:], downsample_mode(root["0"][:], 2, "yx"))

    labels = open_image(tmp_path / "seg.zarr")
    assert labels.kind == "labels" and labels.class_names == {i: f"class {i}" for i in range(4)}
    assert len(labels.levels) >= 2
    assert result.blocks_done == result.blocks_total == math.ceil(300 / 128) * math.ceil(517 / 128)
    assert result.pixels == 300 * 517 and result.overlap_factor > 1


@pytest.mark.parametrize("chunk", [32, 64])  # blocks of 128 write levels 1-2 themselves, or level 1 only
@pytest.mark.parametrize("task", ["segmentation", "restoration"])
def test_every_level_equals_the_level_above_reduced(rgb_image, tmp_path, task, chunk):
    """Levels written by each block from memory and those derived at the end form one pyramid, odd edges included."""
    torch.manual_seed(3)
    model = ConvNet(task=task, out_channels=4 if task == "segmentation" else 3).eval()
    predict(rgb_image, model, tmp_path / "p.zarr", tile=100, chunk=chunk, block=128, device="cpu",
            probabilities=task == "segmentation")
    stores = [("p.zarr", downsample_mode, "yx" if task == "segmentation" else "cyx")]
    if task == "segmentation":
        stores.append(("p.zarr/probabilities", downsample_mean, "cyx"))
    for path, kernel, axes in stores:
        root = zarr.open_group(tmp_path / path, mode="r")
        levels = sorted(root.array_keys(), key=int)
        assert len(levels) == 3
        for above, level in zip(levels, levels[1:]):
            np.testing.assert_array_equal(root[level][:], kernel(root[above][:], 2, axes))


def test_restoration_keeps_dtype_and_rgb(rgb_image, tmp_path):
    torch.manual_seed(1)
    model = ConvNet(task="restoration", out_channels=3).eval()
    predict(rgb_image, model, tmp_path / "restored.zarr", tile=128, chunk=64, device="cpu")
    restored = open_image(tmp_path / "restored.zarr")
    assert restored.rgb and restored.levels[0].shape == rgb_image.shape
    expected = np.clip(np.rint(_whole(model, rgb_image).permute(1, 2, 0).numpy()), 0, 255)
    assert np.abs(restored.levels[0].compute().astype(float) - expected).max() <= 1


def test_classification_writes_a_heatmap_one_pixel_per_stride(rgb_image, tmp_path):
    torch.manual_seed(2)
    model = ConvNet(task="classification", out_channels=2).eval()
    result = predict(rgb_image, model, tmp_path / "heat.zarr", tile=64, overlap=0, chunk=64, device="cpu")
    heat = zarr.open_group(tmp_path / "heat.zarr", mode="r")["0"][:]
    assert heat.shape == (2, math.ceil(300 / 64), math.ceil(517 / 64))
    runner = TileRunner(model, device="cpu")
    r, c = 2, 3  # an interior tile: rows 128..192, cols 192..256
    expected = runner.classify_tiles(rgb_image[None, r * 64:(r + 1) * 64, c * 64:(c + 1) * 64])[0]
    np.testing.assert_allclose(heat[:, r, c], expected.numpy(), atol=2e-3)
    assert result.tiles == heat.shape[1] * heat.shape[2]


def test_region_and_mask_limit_the_work(conv_model, rgb_image, tmp_path):
    result = predict(rgb_image, conv_model, tmp_path / "r.zarr", region=(70, 190, 300, 420), tile=64, chunk=64,
                     block=64, device="cpu")
    labels = zarr.open_group(tmp_path / "r.zarr", mode="r")["0"][:]
    whole = _whole(conv_model, rgb_image).argmax(0).numpy()
    np.testing.assert_array_equal(labels[70:190, 300:420], whole[70:190, 300:420])
    assert not labels[:64].any() and not labels[:, :256].any()
    assert result.pixels == 120 * 120 and result.blocks_total == 2 * 3  # block rows 64-192, columns 256-448

    mask = np.zeros((30, 52), bool)
    mask[:6, :6] = True  # the top-left 60 x 60 pixels
    result = predict(rgb_image, conv_model, tmp_path / "m.zarr", mask=mask, tile=64, chunk=64, block=64,
                     device="cpu")
    assert result.blocks_total == 1


def test_cancel_leaves_an_unfinished_store_that_resumes_to_the_same_result(conv_model, rgb_image, tmp_path):
    cancel = CancelToken()
    seen = []

    def progress(done, total, box):
        seen.append(box)
        cancel.cancel()

    first = predict(rgb_image, conv_model, tmp_path / "c.zarr", tile=64, chunk=64, block=64, device="cpu",
                    progress=progress, cancel=cancel)
    assert first.cancelled and 1 <= first.blocks_done < first.blocks_total
    with pytest.raises(ImageReadError, match="incomplete"):
        open_image(tmp_path / "c.zarr")

    second = predict(rgb_image, conv_model, tmp_path / "c.zarr", tile=64, chunk=64, block=64, device="cpu")
    assert second.blocks_skipped == first.blocks_done and not second.cancelled
    assert second.blocks_done + second.blocks_skipped == second.blocks_total
    predict(rgb_image, conv_model, tmp_path / "u.zarr", tile=64, chunk=64, block=64, device="cpu")
    for level in ("0", "1"):
        np.testing.assert_array_equal(zarr.open_group(tmp_path / "c.zarr", mode="r")[level][:],
                                      zarr.open_group(tmp_path / "u.zarr", mode="r")[level][:])


def test_a_store_begun_by_an_engine_that_wrote_it_differently_is_not_resumed(conv_model, rgb_image, tmp_path):
    """Its finished blocks would lack the levels this engine has each block write: refused, then overwritten."""
    cancel = CancelToken()
    kwargs = dict(tile=64, chunk=64, block=128, device="cpu")
    first = predict(rgb_image, conv_model, tmp_path / "old.zarr", progress=lambda *_: cancel.cancel(), cancel=cancel,
                    **kwargs)
    assert first.cancelled
    root = zarr.open_group(tmp_path / "old.zarr", mode="r+")
    marker = root.attrs[MARKER]
    assert marker["run"].pop("store_format") == 2  # as the engine before blocks wrote their own levels recorded it
    root.attrs[MARKER] = marker
    with pytest.raises(OutputExistsError, match="already exists"):
        predict(rgb_image, conv_model, tmp_path / "old.zarr", **kwargs)
    again = predict(rgb_image, conv_model, tmp_path / "old.zarr", overwrite=True, **kwargs)
    assert again.blocks_skipped == 0 and again.blocks_done == again.blocks_total


def test_bad_inputs_get_clear_errors(conv_model, rgb_image, tmp_path):
    with pytest.raises(HiresError, match="2 channels but the model takes 3"):
        predict(rgb_image[..., :2], conv_model, tmp_path / "a.zarr", device="cpu")
    with pytest.raises(HiresError, match="not inside the image"):
        predict(rgb_image, conv_model, tmp_path / "b.zarr", region=(0, 400, 0, 100), device="cpu")
    with pytest.raises(HiresError, match="unknown model 'hct_tiny_sge'"):
        predict(rgb_image, "hct_tiny_sge", tmp_path / "c.zarr", device="cpu")
    with pytest.raises(HiresError, match="not a napari_hires HiresModel"):
        predict(rgb_image, torch.nn.Conv2d(3, 2, 1), tmp_path / "d.zarr", device="cpu")
    predict(rgb_image[:64, :64], conv_model, tmp_path / "e.zarr", device="cpu")
    other = ConvNet(depth=2).eval()
    with pytest.raises(OutputExistsError, match="overwrite"):
        predict(rgb_image[:64, :64], other, tmp_path / "e.zarr", device="cpu")


def test_xt_tiles_are_windows_of_regions(rgb_image, tmp_path):
    plan = plan_prediction(rgb_image, "xt_nano_seg", tmp_path / "x.zarr")
    model = plan.net
    assert plan.layout.tile == model.tile_size == model.config.window_regions * model.config.region_size
    assert plan.layout.tile % model.input_multiple == 0
    card = card_for(model)
    assert card.tile_size == plan.layout.tile and "windows of 8 x 8 regions" in card.tiling


class _SmallDevice(ConvNet):
    """A device with room for two tiles: larger batches raise the error CUDA raises when memory runs out."""

    def forward_padded(self, x):
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward_padded(x)


def test_out_of_memory_halves_the_batch_and_goes_on(rgb_image, tmp_path):
    torch.manual_seed(0)
    model = _SmallDevice().eval()
    runner = TileRunner(model, device="cpu", batch=8)
    bounds = Box(0, rgb_image.shape[0], 0, rgb_image.shape[1])
    tiled, _ = runner.predict_region(rgb_image, bounds, bounds, TileLayout.for_model(64, model.halo, None, 1))
    assert runner.batch == 2
    reference = ConvNet().eval()
    reference.load_state_dict(model.state_dict())
    assert (tiled - _whole(reference, rgb_image)).abs().max() < 1e-4

    class _NoRoom(ConvNet):
        def forward_padded(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(HiresError, match="out of memory with one .* tile; use a smaller --tile"):
        TileRunner(_NoRoom().eval(), device="cpu", batch=4).run_batch(rgb_image[None, :64, :64])


def test_live_pyramid_fills_coarse_levels_as_blocks_land(conv_model, rgb_image, tmp_path):
    checked = []

    def progress(done, total, box):
        """While the run goes on, level 2 under the new block already equals level 0 reduced twice."""
        store = zarr.open_group(tmp_path / "live.zarr", mode="r")
        level0 = store["0"][box.y0:box.y1, box.x0:box.x1]
        level2 = store["2"][box.y0 // 4:-(-box.y1 // 4), box.x0 // 4:-(-box.x1 // 4)]
        checked.append(np.array_equal(level2, downsample_mode(downsample_mode(level0, 2, "yx"), 2, "yx")))

    predict(rgb_image, conv_model, tmp_path / "live.zarr", tile=64, chunk=64, block=128, device="cpu",
            live_pyramid=True, progress=progress)
    predict(rgb_image, conv_model, tmp_path / "plain.zarr", tile=64, chunk=64, block=128, device="cpu")
    assert len(checked) == 3 * 5 and all(checked)
    live, plain = (zarr.open_group(tmp_path / n, mode="r") for n in ("live.zarr", "plain.zarr"))
    for level in plain.array_keys():
        np.testing.assert_array_equal(live[level][:], plain[level][:])


def test_maxvit_tiles_match_the_whole_image_within_tolerance(rgb_image):
    """Grid attention sees the whole tile, so tiling cannot be exact; the halo and cross-fade keep it close."""
    torch.manual_seed(0)
    model = create_model("maxvit_nano_seg").eval()
    image = np.concatenate([rgb_image[:256], rgb_image[:256]], axis=0)[:, :512]  # 512 x 512: whole-image multiple
    runner = TileRunner(model, device="cpu")
    bounds = Box(0, 512, 0, 512)
    tiled, n = runner.predict_region(image, bounds, bounds, layout_for(model, tile=256))
    whole = _whole(model, image)
    assert n > 1
    assert (tiled - whole).abs().max() < 1e-2
    assert (tiled.argmax(0) == whole.argmax(0)).float().mean() > 0.99
