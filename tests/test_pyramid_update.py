"""Updating a region of level 0 and its covering regions gives the pyramid a fresh build would give."""

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.pyramid_store import update_levels


@pytest.mark.parametrize("labels", [True, False])
def test_region_update_equals_a_fresh_build(tmp_path, labels):
    rng = np.random.default_rng(0)
    before = rng.integers(0, 5 if labels else 255, (300, 413), dtype=np.uint8)
    after = before.copy()
    after[37:151, 200:377] = rng.integers(0, 5 if labels else 255, (114, 177), dtype=np.uint8)

    def build(data, name):
        pyr = Pyramid(levels=[da.from_array(data, chunks=128)], axes="yx", scale=(1.0, 1.0), translation=(0.0, 0.0),
                      kind="labels" if labels else "image")
        return zarr.open_group(write_ome_zarr(pyr, tmp_path / name, chunk=64, derive_levels=True, min_size=32),
                               mode="r+")

    edited, fresh = build(before, "edited.zarr"), build(after, "fresh.zarr")
    keys = sorted(edited.array_keys(), key=int)
    edited["0"][37:151, 200:377] = after[37:151, 200:377]
    boxes = update_levels([edited[k] for k in keys], 37, 151, 200, 377, axes="yx", labels=labels)
    assert len(boxes) == len(keys) - 1 >= 3
    for k in keys:
        np.testing.assert_array_equal(edited[k][:], fresh[k][:])
