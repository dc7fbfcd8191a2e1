"""The "Correct labels" widget in a real viewer: check out the view, paint, find every edit saved at every level."""

from __future__ import annotations

import shutil

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.labels.store import LabelStore
from napari_hires.widgets.correct import CorrectLabelsWidget

SIZE = (2048, 2048)
LAYOUT = dict(chunk=256, derive_levels=True)


@pytest.fixture(scope="module")
def slide_store(tmp_path_factory):
    """The synthetic slide's ground truth as a standalone OME-Zarr label image, and its level 0."""
    labels = synthetic_slide(SIZE)[1]
    truth = np.asarray(labels.levels[0])
    path = write_ome_zarr(labels.with_levels([da.from_array(truth, chunks=512)]),
                          tmp_path_factory.mktemp("slide") / "truth.zarr", **LAYOUT)
    return path, truth


@pytest.fixture
def store_path(slide_store, tmp_path):
    return shutil.copytree(slide_store[0], tmp_path / "truth.zarr")


@pytest.fixture
def truth(slide_store):
    return slide_store[1]


def _assert_store_holds(path, level0: np.ndarray, tmp_path) -> None:
    """The store on disk (opened afresh) holds ``level0`` and every coarser level equals a fresh build of it."""
    fresh_path = write_ome_zarr(
        Pyramid(levels=[da.from_array(level0, chunks=512)], axes="yx", scale=(1.0, 1.0), translation=(0.0, 0.0),
                kind="labels"), tmp_path / "fresh.zarr", overwrite=True, **LAYOUT)
    fresh = zarr.open_group(fresh_path, mode="r")
    store = LabelStore.open(path)
    assert len(store.arrays) == len(list(fresh.array_keys())) >= 3
    for k, arr in enumerate(store.arrays):
        np.testing.assert_array_equal(arr[...], fresh[str(k)][...], err_msg=f"level {k}")


def _open(viewer, path, qtbot):
    [layer] = viewer.open(str(path), plugin="napari-hires")
    widget = CorrectLabelsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert layer.multiscale and widget.layer_box.value is layer
    return layer, widget


def _edit_here(widget, qtbot):
    widget.edit_button.native.click()
    qtbot.waitUntil(lambda: widget.edit_layer is not None, timeout=15000)
    return widget.edit_layer, widget.session.window


def _saved(widget, qtbot):
    qtbot.waitUntil(lambda: widget.pending == 0 and not widget._save_timer.isActive(), timeout=15000)


def test_edit_paint_fill_polygon_undo_autosave_commit_and_check_out_again(make_napari_viewer, qtbot, store_path,
                                                                          truth, tmp_path):
    viewer = make_napari_viewer(show=True)
    layer, widget = _open(viewer, store_path, qtbot)
    viewer.camera.center = (1100.0, 900.0)
    viewer.camera.zoom = 2.0
    qtbot.wait(50)
    edit, window = _edit_here(widget, qtbot)

    # the window is the view: around the camera center, the canvas at zoom 2, in place over the labels
    view_h, view_w = np.asarray(viewer.canvas.size) / 2.0
    assert window.y0 <= 1100 < window.y1 and window.x0 <= 900 < window.x1
    assert abs(window.shape[0] - view_h) <= 2 and abs(window.shape[1] - view_w) <= 2
    assert edit.name == f"{layer.name} (editing {window.y0}:{window.y1}, {window.x0}:{window.x1})"
    np.testing.assert_array_equal(edit.translate, (window.y0, window.x0))
    np.testing.assert_array_equal(edit.data, truth[window.slices])
    assert viewer.layers.selection.active is edit and edit.mode == "paint"
    assert edit.colormap.map(3).tolist() == layer.colormap.map(3).tolist()

    # a brush stroke, a fill, then (without Commit) the store on disk already holds them at every level
    cy, cx = window.shape[0] // 2, window.shape[1] // 2
    edit.brush_size = 15
    edit.paint((cy, cx), 3)
    assert edit.data[cy, cx] == 3
    stroma = np.argwhere(edit.data == 1)[0]
    edit.fill(tuple(stroma), 2)
    _saved(widget, qtbot)
    assert edit.data[tuple(stroma)] == 2
    edited = truth.copy()
    edited[window.slices] = edit.data
    assert (edited != truth).sum() > 150
    _assert_store_holds(store_path, edited, tmp_path)

    # a polygon is saved too, and undoing it is saved again
    edit.paint_polygon(np.array([[10, 10], [10, 120], [90, 60]]), 0)
    _saved(widget, qtbot)
    assert (LabelStore.open(store_path).checkout(window.y0 + 20, window.y0 + 30, window.x0 + 55, window.x0 + 65)
            == 0).all()
    edit.undo()
    _saved(widget, qtbot)
    np.testing.assert_array_equal(edit.data, edited[window.slices])
    _assert_store_holds(store_path, edited, tmp_path)

    # Commit: the editing layer closes and the multiscale layer shows the change at every level
    widget.commit_button.native.click()
    qtbot.waitUntil(lambda: widget.pending == 0 and edit not in viewer.layers, timeout=15000)
    assert widget.edit_layer is None
    np.testing.assert_array_equal(np.asarray(layer.data[0]), edited)
    coarsest = LabelStore.open(store_path).arrays[-1][...]
    np.testing.assert_array_equal(np.asarray(layer.data[-1]), coarsest)
    _assert_store_holds(store_path, edited, tmp_path)

    # checking out the same place again shows the committed edits
    again, window_again = _edit_here(widget, qtbot)  # (the canvas may have changed size with the status line)
    assert window_again.y0 <= window.y0 + cy < window_again.y1 and window_again.x0 <= window.x0 + cx < window_again.x1
    np.testing.assert_array_equal(again.data, edited[window_again.slices])
    assert again.data[window.y0 + cy - window_again.y0, window.x0 + cx - window_again.x0] == 3


def test_large_view_is_capped_and_discard_restores_the_store(make_napari_viewer, qtbot, store_path, truth,
                                                              tmp_path):
    viewer = make_napari_viewer(show=True)
    layer, widget = _open(viewer, store_path, qtbot)
    viewer.reset_view()  # the whole slide: larger than the cap
    qtbot.wait(50)
    widget.max_side.value = 512
    edit, window = _edit_here(widget, qtbot)
    assert window.shape == (512, 512)
    assert "larger than 512 px" in widget.status.value
    edit.paint((256, 256), 0)
    edit.paint((100, 400), 2)
    _saved(widget, qtbot)
    assert not np.array_equal(LabelStore.open(store_path).checkout(*window), truth[window.slices])

    widget.discard_button.native.click()
    qtbot.waitUntil(lambda: widget.pending == 0 and edit not in viewer.layers, timeout=15000)
    assert widget.edit_layer is None
    _assert_store_holds(store_path, truth, tmp_path)
    np.testing.assert_array_equal(np.asarray(layer.data[0][window.slices]), truth[window.slices])


def test_unusable_layers_and_views_are_explained(make_napari_viewer, qtbot, store_path, truth, tmp_path):
    viewer = make_napari_viewer(show=True)
    layer, widget = _open(viewer, store_path, qtbot)
    viewer.camera.center = (0.0, -5000.0, -5000.0)
    viewer.camera.zoom = 4.0
    widget.edit_button.native.click()
    assert "does not show any of" in widget.status.value and widget.edit_layer is None

    tiff = tmp_path / "labels.tif"
    tifffile.imwrite(tiff, truth[:256, :256])
    from_tiff = viewer.add_labels(truth[:256, :256], name="from tiff", metadata={"source": str(tiff)})
    widget.layer_box.value = from_tiff
    widget.edit_button.native.click()
    assert "napari-hires pyramid" in widget.status.value and widget.edit_layer is None
    assert widget.commit_button.enabled is False


def test_a_label_beyond_the_class_table_is_refused_and_the_store_kept(make_napari_viewer, qtbot, store_path, truth,
                                                                       tmp_path):
    viewer = make_napari_viewer(show=True)
    layer, widget = _open(viewer, store_path, qtbot)
    viewer.camera.center = (1100.0, 900.0)
    viewer.camera.zoom = 4.0
    qtbot.wait(50)
    edit, window = _edit_here(widget, qtbot)
    edit.brush_size = 9
    edit.paint((20, 20), 9)  # the store's classes are 0-3
    _saved(widget, qtbot)
    assert "error: label values 9 are not in the class table" in widget.status.value
    assert "3 nucleus" in widget.status.value
    _assert_store_holds(store_path, truth, tmp_path)
