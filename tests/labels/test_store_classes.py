"""A label store keeps to its class table: a commit of a value it does not name is refused unless added explicitly."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pytest

from napari_hires.errors import HiresError
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.readers import open_image
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.labels.store import LabelStore

LAYOUT = dict(chunk=128, min_size=64, derive_levels=True)


@pytest.fixture
def four_classes(tmp_path) -> str:
    """The synthetic slide's ground truth (classes 0-3, named) as a standalone label store."""
    labels = synthetic_slide((512, 512))[1]
    truth = np.asarray(labels.levels[0])
    return str(write_ome_zarr(labels.with_levels([da.from_array(truth, chunks=256)]), tmp_path / "truth.zarr",
                              **LAYOUT))


def _levels(store: LabelStore) -> list[np.ndarray]:
    return [np.asarray(arr[...]) for arr in store.arrays]


def test_commit_refuses_values_beyond_the_class_table(four_classes):
    store = LabelStore.open(four_classes)
    assert sorted(store.class_names) == [0, 1, 2, 3]
    before = _levels(store)
    window = store.checkout(0, 64, 0, 64)
    window[10:20, 10:20] = 9
    window[30, 30] = 7
    words = (f"label values 7, 9 are not in the class table of {four_classes} (0 background, 1 stroma, "
             "2 epithelium, 3 nucleus)")
    with pytest.raises(HiresError, match=re.escape(words) + ".*add_classes"):
        store.commit(0, 0, window)
    for k, (old, new) in enumerate(zip(before, _levels(LabelStore.open(four_classes)))):
        np.testing.assert_array_equal(old, new, err_msg=f"level {k}")
    window[30, 30] = 3
    window[10:20, 10:20] = 0  # classes of the table, and 0 (erased)
    store.commit(0, 0, window)


def test_new_classes_extend_the_table_explicitly(four_classes):
    store = LabelStore.open(four_classes)
    window = store.checkout(0, 64, 0, 64)
    window[10:20, 10:20] = 9
    store.commit(0, 0, window, new_classes={9: "necrosis"})
    assert store.class_names[9] == "necrosis"
    reopened = LabelStore.open(four_classes)
    assert reopened.class_names == {0: "background", 1: "stroma", 2: "epithelium", 3: "nucleus", 9: "necrosis"}
    assert open_image(four_classes).class_names[9] == "necrosis"
    assert (reopened.checkout(10, 20, 10, 20) == 9).all()
    reopened.commit(40, 40, np.full((4, 4), 9, np.uint8))  # now in the table: no new_classes needed
    with pytest.raises(HiresError, match=re.escape("label 2 is already class 'epithelium'")):
        reopened.add_classes({2: "tumour"})
    with pytest.raises(HiresError, match="class names must be non-empty text"):
        reopened.add_classes({12: ""})


def test_values_the_store_already_holds_and_stores_without_a_table_are_accepted(tmp_path):
    data = np.zeros((256, 256), np.uint8)
    data[:50, :50] = 3
    named = Pyramid([da.from_array(data)], "yx", (1.0, 1.0), (0.0, 0.0), kind="labels", class_names={1: "stroma"})
    store = LabelStore.open(write_ome_zarr(named, tmp_path / "named.zarr", **LAYOUT))
    window = store.checkout(0, 100, 0, 100)
    window[60:70, 60:70] = 1
    store.commit(0, 0, window)  # the 3s were there before: committing them back is no new value
    store.commit(200, 200, np.full((8, 8), 3, np.uint8))  # nor is painting 3 elsewhere: the store holds it
    with pytest.raises(HiresError, match=r"label values 4 are not in the class table .*\(0 unlabelled, 1 stroma\) "
                                         "nor in the store"):
        store.commit(200, 200, np.full((8, 8), 4, np.uint8))
    plain = Pyramid([da.from_array(data)], "yx", (1.0, 1.0), (0.0, 0.0), kind="labels")
    store = LabelStore.open(write_ome_zarr(plain, tmp_path / "plain.zarr", **LAYOUT))
    store.commit(200, 200, np.full((8, 8), 9, np.uint8))  # no class table: any value
    assert (store.checkout(200, 208, 200, 208) == 9).all()
