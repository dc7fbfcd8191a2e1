"""Viewport preview: the same output as a full prediction, newest request wins, cached cells cost no model calls."""

from __future__ import annotations

import math
import threading
from concurrent.futures import CancelledError

import dask.array as da
import numpy as np
import pytest
import torch

from napari_hires.engine import Box, TileLayout, TileRunner, predict
from napari_hires.engine.preview import PreviewService, predict_rectangle
from napari_hires.engine.source import as_source
from napari_hires.errors import HiresError
from napari_hires.io.readers import open_image
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models.base import HiresModel

TILE = 64
HALO = 4  # two 3x3 convolutions see 2 px each side: a margin of 4 makes tiled output equal whole-image output
LAYOUT = TileLayout.for_model(TILE, HALO)
CLASSES = {"restoration": 3, "segmentation": 4, "classification": 2}


class TinyConv(HiresModel):
    """Two 3x3 convolutions: restoration (a residual), segmentation logits, or class scores (mean-pooled)."""

    in_channels = 3
    halo = HALO
    tile_size = TILE

    def __init__(self, task: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.task, self.out_channels = task, CLASSES[task]
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(8, self.out_channels, 3, padding=1))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        if self.task == "restoration":
            return x + 0.2 * y
        return y.mean((2, 3)) if self.task == "classification" else 4 * y


def count_calls(model: torch.nn.Module) -> list[int]:
    """A list whose only item counts the model's forward calls (a forward hook)."""
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture(scope="module")
def slide():
    """The synthetic slide, 256 x 320 px with levels of 128 and 64 px, held in memory (rendered once)."""
    image, _ = synthetic_slide((256, 320), chunk=128, min_size=60)
    return image.with_levels([da.from_array(lv.compute(), chunks=(128, 128, 3)) for lv in image.levels])


@pytest.fixture(scope="module")
def predicted(slide, tmp_path_factory):
    """engine.predict's output over a whole level (read back from its store), computed once per task and level."""
    done: dict[tuple[str, int], np.ndarray] = {}

    def get(task: str, level: int) -> np.ndarray:
        if (task, level) not in done:
            out = tmp_path_factory.mktemp("predicted") / f"{task}-{level}.zarr"
            predict(slide, TinyConv(task), out, level=level, tile=TILE, chunk=128, device="cpu")
            done[task, level] = np.asarray(open_image(out).levels[0])
        return done[task, level]

    return get


@pytest.mark.parametrize("task", ["restoration", "segmentation", "classification"])
@pytest.mark.parametrize("level, box", [
    (0, (37, 201, 90, 253)),  # interior, not aligned to cells
    (0, (48, 192, 96, 240)),  # interior, on cell boundaries
    (0, (-40, 100, 200, 10_000)),  # over the top and right edges: clipped to the image
    (2, (0, 64, 0, 80)),  # the whole coarsest level
    (1, (90, 128, 20, 90)),  # bottom edge of a coarse level
])
def test_preview_equals_prediction(slide, predicted, task, level, box):
    model = TinyConv(task)
    full = predicted(task, level)
    runner = TileRunner(model, device="cpu")
    with PreviewService(runner, slide, LAYOUT, cell=48) as service:
        result = service.request(level, box).result(timeout=20)
    h, w = slide.level_yx_shape(level)
    clipped = Box(max(box[0], 0), min(box[1], h), max(box[2], 0), min(box[3], w))
    alone = predict_rectangle(runner, as_source(slide, level), clipped, LAYOUT)  # one rectangle, no cells
    assert result.level == level and result.box == clipped
    fy, fx = slide.downsample_factors()[level]
    if task == "classification":
        s = LAYOUT.tile - LAYOUT.overlap
        rows = slice(clipped.y0 // s, math.ceil(clipped.y1 / s))
        cols = slice(clipped.x0 // s, math.ceil(clipped.x1 / s))
        expected = full[:, rows, cols]
        assert result.scale == (fy * s, fx * s)
        assert result.translate == (rows.start * s * fy, cols.start * s * fx)
    else:
        expected = full[clipped.y0:clipped.y1, clipped.x0:clipped.x1]
        assert result.scale == (fy, fx) and result.translate == (clipped.y0 * fy, clipped.x0 * fx)
    assert result.data.dtype == expected.dtype
    assert_same(task, result.data, expected)
    assert_same(task, alone, expected)


def assert_same(task: str, data: np.ndarray, expected: np.ndarray) -> None:
    """Equal outputs of a convolutional model tiled two ways: labels exactly; pixels up to the rounding of float
    sums to integers (at most one grey level, rarely); class probabilities up to float16 rounding."""
    assert data.shape == expected.shape
    if task == "segmentation":
        np.testing.assert_array_equal(data, expected)
    elif task == "classification":
        np.testing.assert_allclose(data.astype(np.float32), expected.astype(np.float32), atol=2e-3)
    else:
        diff = np.abs(data.astype(int) - expected.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999


def test_predict_rectangle_rejects_a_box_outside_the_image(slide):
    runner = TileRunner(TinyConv("segmentation"), device="cpu")
    source = as_source(slide, 2)
    assert predict_rectangle(runner, source, Box(0, 10, 50, 80), LAYOUT).shape == (10, 30)
    with pytest.raises(HiresError, match="not inside"):
        predict_rectangle(runner, source, Box(0, 10, 50, 90), LAYOUT)


def test_newer_request_cancels_an_older_long_one(slide):
    model = TinyConv("segmentation")
    started, release = threading.Event(), threading.Event()

    def hold_first(*_):
        if not started.is_set():
            started.set()
            release.wait(10)

    model.register_forward_pre_hook(hold_first)
    calls = count_calls(model)
    with PreviewService(TileRunner(model, device="cpu", batch=1), slide, LAYOUT, cell=64) as service:
        old = service.request(0, (0, 256, 0, 320))  # 35 tiles, one per batch
        assert started.wait(10)
        new = service.request(2, (0, 50, 0, 50))
        release.set()
        result = new.result(timeout=20)
        assert result.box == Box(0, 50, 0, 50)
        assert old.cancelled()
        with pytest.raises(CancelledError):
            old.result()
    assert calls[0] < 10  # the old request stopped after its first batch instead of running its 35 tiles


def test_partial_results_fill_the_view_from_its_centre(slide):
    """With a partial callback, cells land centre first; cells to come show the input; the final result is the
    same as a request without partials."""
    box = (0, 192, 0, 320)  # 3 x 5 cells of 64 px: the centre cell is (64..128, 128..192)
    partials = []
    with PreviewService(TileRunner(TinyConv("restoration"), device="cpu"), slide, LAYOUT, cell=64,
                        partial_every=0.0) as service:
        final = service.request(0, box, partial=partials.append).result(timeout=20)
    with PreviewService(TileRunner(TinyConv("restoration"), device="cpu"), slide, LAYOUT, cell=64) as service:
        whole = service.request(0, box).result(timeout=20)
    assert [p.missing for p in partials] == list(range(14, 0, -1)) and final.missing == 0
    assert all(p.cells == 15 for p in partials) and final.cells == 15
    first = partials[0].data
    image = slide.levels[0][:192, :320].compute()
    centre = (slice(64, 128), slice(128, 192))
    np.testing.assert_array_equal(first[centre], final.data[centre])
    assert not np.array_equal(first[centre], image[centre])  # the model's output, not the input
    elsewhere = np.ones((192, 320), dtype=bool)
    elsewhere[centre] = False
    np.testing.assert_array_equal(first[elsewhere], image[elsewhere])  # cells still to come show the input
    second = partials[1].data  # the next cell is one of the centre's four edge neighbours
    changed = [(r, c) for r in range(3) for c in range(5)
               if not np.array_equal(second[64 * r:64 * (r + 1), 64 * c:64 * (c + 1)],
                                     image[64 * r:64 * (r + 1), 64 * c:64 * (c + 1)])]
    assert len(changed) == 2 and (1, 2) in changed and set(changed) - {(1, 2)} <= {(0, 2), (2, 2), (1, 1), (1, 3)}
    assert_same("restoration", final.data, whole.data)


def test_cells_of_one_tile_stride_cost_no_more_tiles_one_by_one(slide):
    """Default cells are one tile stride, so previewing cell by cell (for partial results) runs no more tiles
    than merging the cells into rectangles."""
    box = (0, 192, 0, 320)
    counts = []
    for partial in (None, lambda _: None):
        model = TinyConv("restoration")
        calls = count_calls(model)
        with PreviewService(TileRunner(model, device="cpu", batch=1), slide, LAYOUT) as service:
            assert service.cell == LAYOUT.tile - LAYOUT.overlap
            service.request(0, box, partial=partial).result(timeout=20)
        counts.append(calls[0])
    assert counts[1] <= counts[0]


def test_cached_cells_avoid_model_calls(slide):
    model = TinyConv("restoration")
    calls = count_calls(model)
    with PreviewService(TileRunner(model, device="cpu"), slide, LAYOUT, cell=64) as service:
        first = service.request(0, (10, 120, 20, 250)).result(timeout=20)
        cold = calls[0]
        assert cold > 0
        again = service.request(0, (10, 120, 20, 250))
        assert again.done()  # all cells cached: resolved at once, in the caller's thread
        np.testing.assert_array_equal(again.result().data, first.data)
        inside = service.request(0, (64, 120, 64, 192)).result(timeout=20)  # cells the first request computed
        np.testing.assert_array_equal(inside.data, first.data[54:110, 44:172])
        assert calls[0] == cold
        shifted = service.request(0, (100, 256, 20, 250)).result(timeout=20)  # half of it cached
        warm = calls[0] - cold
    fresh_model = TinyConv("restoration")
    fresh_calls = count_calls(fresh_model)
    with PreviewService(TileRunner(fresh_model, device="cpu"), slide, LAYOUT, cell=64) as fresh:
        expected = fresh.request(0, (100, 256, 20, 250)).result(timeout=20)
    assert 0 < warm < fresh_calls[0]
    assert_same("restoration", shifted.data, expected.data)


def test_cache_is_bounded(slide):
    model = TinyConv("segmentation")
    calls = count_calls(model)
    two_cells = 2 * 64 * 64  # uint8 labels
    with PreviewService(TileRunner(model, device="cpu"), slide, LAYOUT, cell=64, cache_bytes=two_cells) as service:
        service.request(1, (0, 64, 0, 128)).result(timeout=20)
        cold = calls[0]
        assert service.request(1, (0, 64, 0, 128)).done() and calls[0] == cold  # two cells fit
        service.request(1, (64, 128, 0, 128)).result(timeout=20)  # two more push them out
        before = calls[0]
        service.request(1, (0, 64, 0, 128)).result(timeout=20)
        assert calls[0] - before == cold
        assert service.request(1, (0, 64, 0, 128)).done()


def test_a_model_for_other_images_is_refused_at_once(slide):
    model = TinyConv("segmentation")
    model.in_channels = 2
    with pytest.raises(HiresError, match="3 channels but the model takes 2"):
        PreviewService(TileRunner(model, device="cpu"), slide, LAYOUT)


def test_bad_requests_and_close(slide):
    service = PreviewService(TileRunner(TinyConv("segmentation"), device="cpu"), slide, LAYOUT)
    assert service.alive
    with pytest.raises(HiresError, match="does not overlap"):
        service.request(0, (500, 600, 0, 10))
    with pytest.raises(HiresError, match="level"):
        service.request(10, (0, 10, 0, 10))
    running = service.request(0, (0, 256, 0, 320))  # 35 tiles: still running when close() comes
    service.close()
    assert not service.alive and running.cancelled()
    with pytest.raises(HiresError, match="closed"):
        service.request(0, (0, 10, 0, 10))
