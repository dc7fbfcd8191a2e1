"""The editable label store: a committed window lands at level 0 and every coarser level equals a fresh build."""

from __future__ import annotations

import threading
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_hires.errors import HiresError
from napari_hires.io.ome_zarr_writer import OmeZarrWriter, write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.pyramid_store import EDIT_JOURNAL as JOURNAL
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.labels.store import Box, EditSession, LabelStore

SIZE = (1024, 768)
LAYOUT = dict(chunk=128, min_size=64, derive_levels=True)


def _labels_pyramid(data: np.ndarray) -> Pyramid:
    return Pyramid(levels=[da.from_array(data, chunks=256)], axes="yx", scale=(0.5, 0.5), translation=(0.0, 0.0),
                   name="truth", kind="labels", class_names={1: "stroma", 2: "epithelium"},
                   class_colors={1: (1.0, 0.0, 0.0, 1.0), 2: (0.0, 0.0, 1.0, 1.0)})


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return np.asarray(synthetic_slide(SIZE)[1].levels[0])


@pytest.fixture
def store_path(tmp_path, truth):
    return write_ome_zarr(_labels_pyramid(truth), tmp_path / "labels.zarr", **LAYOUT)


def _assert_fresh_build(store: LabelStore, level0: np.ndarray, tmp_path) -> None:
    """Every level of the store equals what writing ``level0`` from scratch gives."""
    fresh = zarr.open_group(write_ome_zarr(_labels_pyramid(level0), tmp_path / "fresh.zarr", overwrite=True,
                                           **LAYOUT), mode="r")
    assert len(store.arrays) == len(list(fresh.array_keys())) >= 4
    for k, arr in enumerate(store.arrays):
        np.testing.assert_array_equal(arr[...], fresh[str(k)][...], err_msg=f"level {k}")


def test_checkout_commit_round_trip_equals_a_fresh_build(store_path, truth, tmp_path):
    store = LabelStore.open(store_path)
    assert store.shape == SIZE and store.dtype == np.uint8
    assert store.class_names == {1: "stroma", 2: "epithelium"}
    window = store.checkout(301, 555, 97, 420)
    np.testing.assert_array_equal(window, truth[301:555, 97:420])
    window[20:90, 30:200] = 2  # a painted rectangle
    window[150:, :50] = 0  # an erased corner
    window[5, 5] = 1
    assert store.commit(301, 97, window) == Box(301, 555, 97, 420)

    edited = truth.copy()
    edited[301:555, 97:420] = window
    assert not (Path(store_path) / JOURNAL).exists()
    reopened = LabelStore.open(store_path)
    np.testing.assert_array_equal(reopened.checkout(301, 555, 97, 420), window)
    np.testing.assert_array_equal(np.asarray(reopened.levels[0]), edited)
    _assert_fresh_build(reopened, edited, tmp_path)


def test_display_levels_show_a_commit_made_after_they_were_read(store_path, truth):
    store = LabelStore.open(store_path)
    before = store.levels
    np.asarray(before[-1])  # read (and possibly cache) the coarsest level
    store.commit(0, 0, np.full((256, 256), 2, np.uint8))
    after = store.levels
    assert [lv.name for lv in after] != [lv.name for lv in before]
    assert (np.asarray(after[-1])[:16, :16] == 2).all()  # 256 px at level 0 = 16 px at level 4


def test_labels_group_of_an_image_store(tmp_path, truth):
    image = synthetic_slide(SIZE)[0]
    path = write_ome_zarr(image, tmp_path / "slide.zarr", labels={"truth": _labels_pyramid(truth)}, **LAYOUT)
    by_name = LabelStore.open(path, "truth")
    by_path = LabelStore.open(f"{path}/labels/truth")
    assert by_name.path == by_path.path and by_name.shape == SIZE
    edit = np.full((40, 60), 1, np.uint8)
    by_name.commit(500, 700, edit)
    edited = truth.copy()
    edited[500:540, 700:760] = 1
    _assert_fresh_build(by_path, edited, tmp_path)
    with pytest.raises(HiresError, match="is an image, not a label image.*labels/truth"):
        LabelStore.open(path)
    with pytest.raises(HiresError, match="has labels named 'nuclei'"):
        LabelStore.open(path, "nuclei")


@pytest.mark.parametrize(
    ("center", "extent", "expected", "clipped"),
    [
        ((500.0, 400.0), (200.0, 100.0), Box(400, 600, 350, 450), False),  # the view, inside the labels
        ((50.0, 700.0), (300.0, 200.0), Box(0, 200, 600, 768), False),  # the view's part inside the labels
        ((512.0, 384.0), (5000.0, 150.0), Box(412, 612, 309, 459), True),  # central 200 px of a tall view
        ((900.0, 384.0), (700.0, 700.0), Box(687, 887, 284, 484), True),  # central part of the part inside
    ],
)
def test_window_for_view_clips_to_the_labels_and_caps_the_side(store_path, center, extent, expected, clipped):
    store = LabelStore.open(store_path)
    assert store.window_for_view(center, extent, max_side=200) == (expected, clipped)


def test_window_for_view_outside_the_labels_is_refused(store_path):
    store = LabelStore.open(store_path)
    with pytest.raises(HiresError, match="does not show any of"):
        store.window_for_view((-500.0, 100.0), (200.0, 200.0))


def test_files_that_cannot_be_edited_in_place_get_a_conversion_hint(tmp_path, truth):
    tiff = tmp_path / "labels.ome.tif"
    tifffile.imwrite(tiff, truth)
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=truth.shape, dtype=truth.dtype, chunks=(256, 256))[...] = truth
    group = zarr.open_group(str(tmp_path / "levels.zarr"), mode="w")
    group.create_array("0", shape=truth.shape, dtype=truth.dtype, chunks=(256, 256))
    for path in (tiff, plain, tmp_path / "levels.zarr"):
        with pytest.raises(HiresError, match="napari-hires pyramid .* --kind labels"):
            LabelStore.open(path)
    with pytest.raises(HiresError, match="no such label store"):
        LabelStore.open(tmp_path / "missing.zarr")


def test_a_store_still_being_written_is_refused(tmp_path, truth):
    writer = OmeZarrWriter(_labels_pyramid(truth), tmp_path / "pred.zarr", run={"job": 1}, **LAYOUT)
    writer.write()  # every level written, but no metadata yet: an engine run in progress
    with pytest.raises(HiresError, match="still being written"):
        LabelStore.open(tmp_path / "pred.zarr")
    writer.finish()
    assert LabelStore.open(tmp_path / "pred.zarr").shape == SIZE


def test_bad_commits_are_refused_and_leave_the_store_unchanged(store_path, truth):
    store = LabelStore.open(store_path)
    with pytest.raises(HiresError, match="outside the labels"):
        store.commit(1000, 700, np.ones((100, 100), np.uint8))
    with pytest.raises(HiresError, match="do not fit the uint8 store"):
        store.commit(0, 0, np.full((10, 10), 300, np.uint16))
    with pytest.raises(HiresError, match="must be integers"):
        store.commit(0, 0, np.ones((10, 10), np.float32))
    with pytest.raises(HiresError, match="must be 2-D"):
        store.commit(0, 0, np.ones((1, 10, 10), np.uint8))
    with pytest.raises(HiresError, match="empty or outside"):
        store.checkout(10, 10, 0, 5)
    np.testing.assert_array_equal(store.arrays[0][...], truth)
    assert store.commit(0, 0, np.full((10, 10), 3, np.int64)) == Box(0, 10, 0, 10)  # fits: stored as uint8
    assert (store.arrays[0][:10, :10] == 3).all()


def test_an_interrupted_commit_is_repaired_when_the_store_is_opened(store_path, truth, tmp_path):
    """A crash after level 0 was written but before the coarser levels were: the journal names the box."""
    store = LabelStore.open(store_path)
    store.pyramid_store.begin_edit(Box(100, 164, 200, 300))
    store.arrays[0][100:164, 200:300] = 2
    coarse_before = store.arrays[2][...]
    reopened = LabelStore.open(store_path)
    assert not (reopened.path / JOURNAL).exists()
    edited = truth.copy()
    edited[100:164, 200:300] = 2
    assert not np.array_equal(coarse_before, reopened.arrays[2][...])
    _assert_fresh_build(reopened, edited, tmp_path)


def test_concurrent_commits_keep_the_pyramid_in_step(store_path, truth, tmp_path):
    store = LabelStore.open(store_path)
    boxes = [(y, x) for y in (0, 97, 300) for x in (0, 150, 333)]  # overlapping 200 x 200 windows
    values = {box: i % 3 + 1 for i, box in enumerate(boxes)}
    threads = [threading.Thread(target=store.commit, args=(y, x, np.full((200, 200), values[y, x], np.uint8)))
               for y, x in boxes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _assert_fresh_build(store, store.arrays[0][...], tmp_path)  # whatever order they landed in
    assert not np.array_equal(store.arrays[0][...], truth)


def test_edit_session_saves_each_change_in_order_and_reverts(store_path, truth, tmp_path):
    store = LabelStore.open(store_path)
    window = Box(200, 712, 100, 612)
    session = EditSession(store, window)
    data = session.data
    assert session.save(data) is None  # nothing changed
    strokes = []
    for i in range(5):  # overlapping strokes, queued faster than they are written
        data[50 * i: 50 * i + 120, 40 * i: 40 * i + 90] = i % 3 + 1
        strokes.append(session.save(data))
    assert strokes[-1].result(timeout=30) == Box(400, 520, 260, 350)
    edited = truth.copy()
    edited[window.slices] = data
    _assert_fresh_build(LabelStore.open(store_path), edited, tmp_path)

    data[:] = 0
    session.save(data)
    session.revert().result(timeout=30)
    np.testing.assert_array_equal(session.data, truth[window.slices])
    session.close()
    _assert_fresh_build(LabelStore.open(store_path), truth, tmp_path)
