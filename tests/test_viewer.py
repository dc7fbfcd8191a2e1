"""The synthetic slide in a real napari viewer under Xvfb: it renders, it zooms, and it never reads whole levels."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt

from napari_hires.demo import add_slide_layers
from napari_hires.io.synthetic import DEFAULT_SIZE, synthetic_slide

#: console scripts of the environment running the tests (not necessarily on PATH)
BIN = Path(sys.executable).parent

# A few hundred chunks at most for any one step; a level 0 of the default slide has 65,536.
CHUNK_BUDGET = 300


def _settle(qtbot, viewer):
    """Let napari's slicer react to the camera and draw, then return the canvas."""
    for _ in range(4):
        qtbot.wait(30)
    return viewer.screenshot(canvas_only=True, flash=False)[..., :3]


def _counting(level, counter: Counter, k: int):
    """The same lazy level, counting every chunk that is computed, keyed by level."""

    def count(block):
        counter[k] += 1
        return block

    return level.map_blocks(count, dtype=level.dtype)


def _tissue_places(labels_layer) -> list[tuple[float, float]]:
    """Two places deep inside tissue (one per half of the slide), found on the coarsest labels level."""
    coarse = np.asarray(labels_layer.data[-1])
    depth = distance_transform_edt(coarse > 0)
    half = coarse.shape[0] // 2
    places = []
    for part in (slice(0, half), slice(half, None)):
        y, x = np.unravel_index(np.argmax(depth[part]), depth[part].shape)
        places.append(((y + part.indices(coarse.shape[0])[0] + 0.5) / coarse.shape[0], (x + 0.5) / coarse.shape[1]))
    return places


def test_screenshots_at_three_zooms_and_two_places_differ(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    image_layer, labels_layer = add_slide_layers(viewer)
    h, w = DEFAULT_SIZE
    frames, levels = [], []
    for (cy, cx), zoom_to_level in itertools.product(_tissue_places(labels_layer), [None, 8.0, 1.0]):
        viewer.reset_view()
        if zoom_to_level is not None:
            viewer.camera.zoom = 1.0 / zoom_to_level  # 1 screen pixel = zoom_to_level image pixels
        viewer.camera.center = (cy * h, cx * w)
        frames.append(_settle(qtbot, viewer))
        levels.append(image_layer.data_level)
    assert len(set(levels)) == 3 and min(levels) == 0, levels
    for frame in frames:
        assert frame.std() > 5, "a rendered frame is blank"
    for a, b in itertools.combinations(range(len(frames)), 2):
        diff = np.abs(frames[a].astype(float) - frames[b].astype(float)).mean()
        assert diff > 2, f"views {a} and {b} look the same"


def test_open_render_and_zoom_read_few_chunks(make_napari_viewer, qtbot):
    image, labels = synthetic_slide()
    reads: Counter = Counter()
    levels = [_counting(lv, reads, k) for k, lv in enumerate(image.levels)]
    level0_chunks = levels[0].npartitions

    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(levels, multiscale=True, rgb=True)
    opened = sum(reads.values())
    assert opened <= CHUNK_BUDGET

    reads.clear()
    first = _settle(qtbot, viewer)
    assert first.std() > 5
    assert sum(reads.values()) <= CHUNK_BUDGET and reads[0] == 0

    reads.clear()
    h, w = image.yx_shape
    viewer.camera.center = (0.3172 * h, 0.7719 * w)
    viewer.camera.zoom = 1.0
    full = _settle(qtbot, viewer)
    assert layer.data_level == 0
    assert full.std() > 5
    assert 0 < reads[0] <= CHUNK_BUDGET < level0_chunks
    assert sum(reads.values()) <= CHUNK_BUDGET


@pytest.mark.slow
def test_demo_command_writes_a_screenshot(tmp_path):
    out = tmp_path / "demo.png"
    result = subprocess.run(
        [str(BIN / "napari-hires"), "demo", "--screenshot", str(out), "--size", "20000", "30000"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    picture = np.asarray(Image.open(out))
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100
    assert picture[..., :3].std() > 5


def test_store_opened_in_viewer_reads_only_visible_chunks(make_napari_viewer, qtbot, tmp_path):
    import dask.array as da
    from chunk_counting import CountingStore
    from zarr.storage import LocalStore

    from napari_hires.io.ome_zarr_writer import write_ome_zarr
    from napari_hires.io.pyramid import Pyramid
    from napari_hires.io.readers import open_image

    side, chunk = 8192, 256
    texture = da.random.default_rng(7).integers(0, 255, (side, side), chunks=1024, dtype=np.uint8)
    source = Pyramid(levels=[texture], axes="yx", scale=(1.0, 1.0), translation=(0.0, 0.0), name="texture")
    out = write_ome_zarr(source, tmp_path / "texture.zarr", chunk=chunk, derive_levels=True)
    store = CountingStore(LocalStore(out, read_only=True))

    pyramid = open_image(store)
    level0 = pyramid.levels[0]
    assert len(pyramid.levels) >= 4 and store.chunk_reads("0") == 0

    viewer = make_napari_viewer(show=True)
    for data, kwargs, layer_type in pyramid.layer_data():
        layer = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    store.reset()
    assert _settle(qtbot, viewer).std() > 5
    assert store.chunk_reads("0") == 0 and sum(store.counts.values()) <= CHUNK_BUDGET

    store.reset()
    viewer.camera.center = (0.71 * side, 0.23 * side)
    viewer.camera.zoom = 1.0
    assert _settle(qtbot, viewer).std() > 5
    assert layer.data_level == 0
    assert 0 < store.chunk_reads("0") <= CHUNK_BUDGET < level0.npartitions
