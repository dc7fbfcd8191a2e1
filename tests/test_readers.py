"""Readers on files written by peers (ome-zarr-py, tifffile, zarr, Pillow): shapes, metadata, laziness, clear errors."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from chunk_counting import CountingStore, ProcessReads
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_image, write_labels
from PIL import Image
from zarr.storage import LocalStore

from napari_hires._reader import get_reader, read_layers
from napari_hires.errors import ImageReadError
from napari_hires.io.downsample import downsample_mean
from napari_hires.io.readers import can_read, open_image, open_labels

FORMATS = {"0.4": (FormatV04, 2), "0.5": (FormatV05, 3)}
RNG = np.random.default_rng(0)


def write_ome_zarr(path: Path, data: np.ndarray, axes: str, version: str, labels: np.ndarray | None = None, **kw):
    """An OME-Zarr image written by ome-zarr-py (levels at 1/2 and 1/4), optionally with a ``cells`` label image."""
    fmt_cls, zarr_format = FORMATS[version]
    group = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    chunks = (1,) * (data.ndim - 2) + (64, 64)
    write_image(data, group, axes=axes, fmt=fmt_cls(), scale_factors=(2, 4),
                storage_options={"chunks": chunks}, **kw)
    if labels is not None:
        write_labels(
            labels, group, name="cells", axes="yx", fmt=fmt_cls(), scaler=None, scale_factors=(2, 4),
            storage_options={"chunks": (64, 64)},
            label_metadata={
                "colors": [{"label-value": 1, "rgba": [255, 0, 0, 255]}, {"label-value": 2, "rgba": [0, 0, 255, 255]}],
                "properties": [{"label-value": 1, "class": "tumor"}, {"label-value": 2, "class": "stroma"}],
            },
        )
    return path


def _labels_image(shape=(256, 192)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[20:90, 30:100] = 1
    lab[150:230, 40:170] = 2
    return lab


def _meta_file(path: Path, version: str) -> Path:
    return path / (".zattrs" if version == "0.4" else "zarr.json")


# ---------------------------------------------------------------------------------------------- OME-Zarr
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_grayscale_levels_scale_and_pixels(tmp_path, version):
    data = RNG.integers(100, 3000, (256, 192), dtype=np.uint16)
    path = write_ome_zarr(tmp_path / "gray.ome.zarr", data, "yx", version, scale={"y": 0.5, "x": 0.25})

    pyr = open_image(path)

    assert pyr.axes == "yx" and pyr.kind == "image" and pyr.name == "gray"
    assert [lv.shape for lv in pyr.levels] == [(256, 192), (128, 96), (64, 48)]
    assert pyr.scale == (0.5, 0.25) and pyr.translation == (0.0, 0.0)
    np.testing.assert_array_equal(pyr.levels[0].compute(), data)
    (lo, hi), = pyr.contrast_limits
    assert data.min() <= lo < hi <= data.max()
    (layer_data, meta, kind), = pyr.layer_data()
    assert kind == "image" and meta["multiscale"] and len(layer_data) == 3


def test_ome_zarr_translation_and_multiscale_wide_scale_compose(tmp_path):
    path = write_ome_zarr(tmp_path / "moved.zarr", np.zeros((64, 64), np.uint16), "yx", "0.4", scale={"y": 0.5, "x": 0.25})
    attrs = json.loads((path / ".zattrs").read_text())
    attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][1]["translation"] = [10.0, 20.0]
    attrs["multiscales"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [2.0, 2.0]}]
    (path / ".zattrs").write_text(json.dumps(attrs))

    pyr = open_image(path)

    assert pyr.scale == (1.0, 0.5) and pyr.translation == (20.0, 40.0)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_channels_take_names_and_windows_from_omero(tmp_path, version):
    data = RNG.integers(0, 1000, (3, 128, 128), dtype=np.uint16)
    omero = {"channels": [{"label": name, "color": "FFFFFF", "window": {"start": 10 * i, "end": 500 + i, "min": 0,
                                                                         "max": 65535}}
                          for i, name in enumerate(["DAPI", "GFP", "RFP"])]}
    path = write_ome_zarr(tmp_path / "cyx.zarr", data, "cyx", version, omero=omero)

    pyr = open_image(path)

    assert pyr.axes == "cyx" and len(pyr.levels) == 3 and pyr.levels[2].shape == (3, 32, 32)
    assert pyr.channel_names == ["DAPI", "GFP", "RFP"]
    assert pyr.contrast_limits == [(0.0, 500.0), (10.0, 501.0), (20.0, 502.0)]
    (_, meta, kind), = pyr.layer_data()
    assert kind == "image" and meta["channel_axis"] == 0 and meta["name"] == ["DAPI", "GFP", "RFP"]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_labels_groups_with_colors_and_class_names(tmp_path, version):
    data = RNG.integers(0, 255, (256, 192), dtype=np.uint8)
    labels = _labels_image()
    path = write_ome_zarr(tmp_path / "img.zarr", data, "yx", version, labels=labels)

    found = open_labels(path)

    assert list(found) == ["cells"]
    cells = found["cells"]
    assert cells.kind == "labels" and cells.axes == "yx" and len(cells.levels) > 1
    np.testing.assert_array_equal(cells.levels[0].compute(), labels)
    assert cells.class_colors == {1: (1.0, 0.0, 0.0, 1.0), 2: (0.0, 0.0, 1.0, 1.0)}
    assert cells.class_names == {1: "tumor", 2: "stroma"}
    # the label group opened on its own is a labels pyramid too
    assert open_image(path / "labels" / "cells").kind == "labels"

    layers = get_reader(str(path))(str(path))
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    assert layers[1][1]["name"] == "cells" and layers[1][1]["multiscale"]
    np.testing.assert_allclose(layers[1][1]["colormap"].map(np.array([1]))[0], [1, 0, 0, 1])


def test_bioformats2raw_wrapper_opens_the_image_inside(tmp_path):
    data = RNG.integers(0, 255, (128, 128), dtype=np.uint8)
    root = zarr.open_group(tmp_path / "b2r.zarr", mode="w", zarr_format=2)
    root.attrs["bioformats2raw.layout"] = 3
    write_ome_zarr(tmp_path / "b2r.zarr" / "0", data, "yx", "0.4")

    assert can_read(tmp_path / "b2r.zarr")
    assert open_image(tmp_path / "b2r.zarr").levels[0].shape == (128, 128)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_opening_reads_no_level0_chunks(tmp_path, version):
    data = RNG.integers(0, 4000, (2, 256, 256), dtype=np.uint16)
    path = write_ome_zarr(tmp_path / "lazy.zarr", data, "cyx", version, labels=_labels_image((256, 256)))
    store = CountingStore(LocalStore(path, read_only=True))

    pyr = open_image(store)
    labels = open_labels(store)

    assert pyr.levels[0].shape == (2, 256, 256) and "cells" in labels
    assert store.chunk_reads("s0") == 0
    assert store.chunk_reads("labels/cells/s0") == 0
    assert store.chunk_reads("s2") > 0, "contrast limits come from the coarsest level"
    # the counter does see level-0 reads when they happen
    pyr.levels[0][:, :64, :64].compute()
    assert store.chunk_reads("s0") == 2


def _missing_chunk_warnings(path) -> list[str]:
    """The missing-chunk warnings that opening path (image and labels) gives."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_image(path)
        open_labels(path)
    return [str(w.message) for w in caught if "missing" in str(w.message)]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_a_deleted_chunk_is_reported_once_naming_level_and_count(tmp_path, version):
    path = write_ome_zarr(tmp_path / "holed.zarr", RNG.integers(1, 255, (256, 256), dtype=np.uint8), "yx", version,
                          labels=_labels_image((256, 256)))
    (path / "s0" / ("1/2" if version == "0.4" else "c/1/2")).unlink()

    first = _missing_chunk_warnings(path)
    again = _missing_chunk_warnings(path)

    assert len(first) == 1 and again == [], "one warning per store and process"
    assert "holed.zarr" in first[0] and re.search(r"level s0: 1 of 16 chunks", first[0]), first[0]


def test_a_deleted_label_chunk_is_reported(tmp_path):
    path = write_ome_zarr(tmp_path / "lab.zarr", RNG.integers(1, 255, (256, 256), dtype=np.uint8), "yx", "0.5",
                          labels=_labels_image((256, 256)))
    (path / "labels" / "cells" / "s0" / "c" / "0" / "1").unlink()  # a chunk holding label 1

    found = _missing_chunk_warnings(path)

    assert len(found) == 1 and re.search(r"lab\.zarr/labels/cells.*level s0: 1 of 16 chunks", found[0]), found


def test_complete_and_naturally_sparse_stores_give_no_missing_chunk_warning(tmp_path):
    complete = write_ome_zarr(tmp_path / "whole.zarr", RNG.integers(1, 255, (256, 256), dtype=np.uint8), "yx", "0.5")
    dark = RNG.integers(1, 255, (256, 256), dtype=np.uint8)
    dark[:128] = 0  # zarr stores no chunk that is all fill value: these are absent, not missing
    sparse = write_ome_zarr(tmp_path / "dark.zarr", dark, "yx", "0.5", labels=_labels_image((256, 256)))
    assert sum(f.is_file() for f in (sparse / "s0" / "c").rglob("*")) < 16, "the test needs chunks zarr left out"

    assert _missing_chunk_warnings(complete) == []
    assert _missing_chunk_warnings(sparse) == []


def test_a_prediction_restricted_to_a_region_does_not_warn_until_a_written_chunk_is_deleted(tmp_path):
    from napari_hires.engine.predict import predict
    from napari_hires.io.synthetic import render_region

    image = render_region(0, 4000, 5024, 6000, 7024, size=(16384, 16384))
    out = tmp_path / "pred.zarr"
    predict(image, "hct_tiny_seg_synthetic", out, region=(0, 512, 512, 1024), chunk=128, block=256, device="cpu")
    written = sorted((out / "0" / "c").rglob("*/*"), key=lambda f: f.stat().st_size)
    assert 0 < len(written) < 64, "blocks outside the region are left unwritten"
    damaged = Path(shutil.copytree(out, tmp_path / "damaged.zarr"))
    (damaged / written[-1].relative_to(out)).unlink()  # the chunk with the most detail

    assert _missing_chunk_warnings(out) == []
    (message,) = _missing_chunk_warnings(damaged)
    assert "level 0: 1 of 64 chunks" in message


# ---------------------------------------------------------------------------------------------- plain zarr
def test_plain_zarr_array_is_one_level(tmp_path):
    data = RNG.integers(0, 255, (200, 300), dtype=np.uint8)
    arr = zarr.create_array(tmp_path / "plain.zarr", shape=data.shape, chunks=(64, 64), dtype=data.dtype)
    arr[:] = data

    pyr = open_image(tmp_path / "plain.zarr")

    assert pyr.axes == "yx" and len(pyr.levels) == 1 and pyr.scale == (1.0, 1.0)
    np.testing.assert_array_equal(pyr.levels[0].compute(), data)


def test_plain_zarr_group_of_decreasing_levels_is_a_pyramid(tmp_path):
    group = zarr.open_group(tmp_path / "levels.zarr", mode="w")
    for i, size in enumerate((256, 128, 64)):
        group.create_array(str(i), shape=(size, size, 3), chunks=(64, 64, 3), dtype=np.uint8)[:] = i + 1

    pyr = open_image(tmp_path / "levels.zarr")

    assert pyr.axes == "yxc" and pyr.rgb and [lv.shape[0] for lv in pyr.levels] == [256, 128, 64]
    assert int(pyr.levels[2][0, 0, 0].compute()) == 3
    (data, meta, _), = pyr.layer_data()
    assert meta["rgb"] and meta["multiscale"] and len(data) == 3


def test_plain_zarr_group_whose_shapes_do_not_decrease_is_refused(tmp_path):
    group = zarr.open_group(tmp_path / "same.zarr", mode="w")
    for i in range(2):
        group.create_array(str(i), shape=(64, 64), dtype=np.uint8)
    with pytest.raises(ImageReadError, match="do not decrease"):
        open_image(tmp_path / "same.zarr")


# ---------------------------------------------------------------------------------------------- TIFF family
def _write_subifd_pyramid(path: Path, data: np.ndarray, photometric: str, metadata: dict) -> None:
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(data, subifds=2, tile=(64, 64), photometric=photometric, metadata=metadata, compression="zlib")
        for factor in (2, 4):
            tw.write(data[..., ::factor, ::factor, :] if photometric == "rgb" else data[..., ::factor, ::factor],
                     subfiletype=1, tile=(64, 64), photometric=photometric, compression="zlib")


def test_ome_tiff_rgb_pyramid_levels_from_subifds(tmp_path):
    data = RNG.integers(0, 255, (256, 192, 3), dtype=np.uint8)
    path = tmp_path / "rgb.ome.tif"
    _write_subifd_pyramid(path, data, "rgb", {"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})

    pyr = open_image(path)

    assert pyr.axes == "yxc" and pyr.rgb and pyr.name == "rgb"
    assert [lv.shape for lv in pyr.levels] == [(256, 192, 3), (128, 96, 3), (64, 48, 3)]
    assert pyr.scale[:2] == (0.25, 0.25) and pyr.contrast_limits is None
    np.testing.assert_array_equal(pyr.levels[1].compute(), data[::2, ::2])
    (levels, meta, kind), = pyr.layer_data()
    assert kind == "image" and meta["rgb"] and meta["multiscale"] and meta["scale"] == [0.25, 0.25]


def test_ome_tiff_multichannel_pyramid_has_channel_names(tmp_path):
    data = RNG.integers(0, 4000, (2, 128, 128), dtype=np.uint16)
    path = tmp_path / "two.ome.tif"
    _write_subifd_pyramid(path, data, "minisblack", {"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP"]}})

    pyr = open_image(path)

    assert pyr.axes == "cyx" and len(pyr.levels) == 3 and pyr.channel_names == ["DAPI", "GFP"]
    assert len(pyr.contrast_limits) == 2 and all(0 <= lo < hi <= 4000 for lo, hi in pyr.contrast_limits)
    (_, meta, _), = pyr.layer_data()
    assert meta["channel_axis"] == 0 and meta["name"] == ["DAPI", "GFP"]


def test_plain_tiled_rgb_tiff_and_single_level_grayscale_are_lazy_single_levels(tmp_path):
    rgb = RNG.integers(0, 255, (300, 200, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, tile=(64, 64), photometric="rgb")
    gray = RNG.integers(0, 60000, (150, 100), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "gray.tiff", gray)

    rgb_pyr = open_image(tmp_path / "rgb.tif")
    gray_pyr = open_image(tmp_path / "gray.tiff")

    assert rgb_pyr.axes == "yxc" and rgb_pyr.rgb and len(rgb_pyr.levels) == 1
    assert rgb_pyr.levels[0].chunksize == (64, 64, 3), "one dask chunk per TIFF tile"
    np.testing.assert_array_equal(rgb_pyr.levels[0].compute(), rgb)
    assert gray_pyr.axes == "yx" and len(gray_pyr.levels) == 1
    np.testing.assert_array_equal(gray_pyr.levels[0].compute(), gray)
    (lo, hi), = gray_pyr.contrast_limits
    assert gray.min() <= lo < hi <= gray.max()


def _channel_tiffs(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Multichannel TIFFs as tifffile writes them: plain (no metadata: axes 'QYX'), ImageJ hyperstack, OME-TIFF."""
    five = RNG.integers(0, 4000, (5, 96, 64), dtype=np.uint16)
    files = {
        "plain5": (tmp_path / "plain5.tif", five, {}),
        "plain2": (tmp_path / "plain2.tif", five[:2], {"photometric": "minisblack"}),
        "imagej2": (tmp_path / "imagej2.tif", five[:2], {"imagej": True, "metadata": {"axes": "CYX"}}),
        "ome5": (tmp_path / "ome5.ome.tif", five, {"metadata": {"axes": "CYX"}}),
    }
    for path, data, kw in files.values():
        tifffile.imwrite(path, data, **kw)
    pages = tmp_path / "pages3.tif"
    with tifffile.TiffWriter(pages) as tw:  # one page per channel, no shape metadata: axes 'IYX'
        for plane in five[:3]:
            tw.write(plane, metadata=None)
    return {**{k: (p, d) for k, (p, d, _) in files.items()}, "pages3": (pages, five[:3])}


def test_multichannel_tiffs_read_with_a_channel_axis_and_show_as_channel_layers(tmp_path):
    for name, (path, data) in _channel_tiffs(tmp_path).items():
        pyr = open_image(path)

        assert pyr.axes == "cyx" and pyr.shape == data.shape, name
        np.testing.assert_array_equal(pyr.levels[0].compute(), data)
        layers = read_layers(str(path))
        (_, meta, kind), = layers
        assert kind == "image" and meta["channel_axis"] == 0 and len(meta["name"]) == len(data), name


def test_a_long_plain_stack_stays_a_stack(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", RNG.integers(0, 255, (12, 32, 32), dtype=np.uint8))

    assert open_image(tmp_path / "stack.tif").axes == "tyx", "more planes than channels usually have: a stack"


def test_viewer_opens_a_plain_five_channel_tiff_as_five_layers(make_napari_viewer, tmp_path):
    path, data = _channel_tiffs(tmp_path)["plain5"]
    viewer = make_napari_viewer()

    viewer.open(str(path), plugin="napari-hires")

    assert [layer.name for layer in viewer.layers] == [f"plain5 c{i}" for i in range(5)]
    assert all(layer.data.shape == (96, 64) for layer in viewer.layers) and viewer.dims.ndim == 2


def test_svs_like_file_uses_the_levels_of_series_0_and_mpp(tmp_path):
    data = RNG.integers(0, 255, (512, 384, 3), dtype=np.uint8)
    path = tmp_path / "slide.svs"
    header = "Aperio Image Library v12.0.15\r\n384x512 [0,0 384x512] (128x128) RAW|AppMag = 20|MPP = 0.4990"
    with tifffile.TiffWriter(path) as tw:
        kw = {"photometric": "rgb", "metadata": None}
        tw.write(data, tile=(128, 128), description=header, **kw)
        tw.write(data[::16, ::16], description="Aperio Image Library v12.0.15\r\nthumbnail", **kw)
        for factor in (2, 4):
            tw.write(data[::factor, ::factor], tile=(128, 128), description="Aperio Image Library", **kw)

    pyr = open_image(path)

    assert [lv.shape for lv in pyr.levels] == [(512, 384, 3), (256, 192, 3), (128, 96, 3)], "thumbnail is no level"
    assert pyr.scale[:2] == (0.499, 0.499) and pyr.units == {"y": "micrometer", "x": "micrometer"}
    np.testing.assert_array_equal(pyr.levels[2].compute(), data[::4, ::4])


def _tiled_bigtiff(path: Path, side: int = 4096, tile: int = 256) -> np.ndarray:
    """A single-level BigTIFF of noisy RGB in JPEG tiles, as slide scanners and converters write them."""
    img = np.tile(RNG.integers(0, 255, (tile, tile, 3), dtype=np.uint8), (side // tile, side // tile, 1))
    tifffile.imwrite(path, img, bigtiff=True, tile=(tile, tile), photometric="rgb", compression="jpeg")
    return img


def _tile_bytes(path: Path, rows: range, cols: range) -> int:
    """Stored bytes of the tiles at (row, col) of the first page."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        across = -(-page.imagewidth // page.tilewidth)
        return sum(page.databytecounts[r * across + c] for r in rows for c in cols)


def test_single_level_tiled_bigtiff_opens_without_reading_tiles_and_zooms_out_lazily(tmp_path):
    warm = tmp_path / "warm.tif"
    _tiled_bigtiff(warm, side=2304)
    with pytest.warns(UserWarning, match="no pyramid"):  # first reads import modules: keep them out of the counts
        read_layers(str(warm))[0][0][1][:8, :8].compute()
    path = tmp_path / "big.tif"
    _tiled_bigtiff(path)
    one_tile = _tile_bytes(path, range(1), range(1))

    with ProcessReads() as opening, pytest.warns(UserWarning, match=r"big\.tif has no pyramid.*napari-hires pyramid"):
        (levels, meta, kind), = read_layers(str(path))

    assert opening.bytes < one_tile, "opening reads metadata only, no tile"
    assert kind == "image" and meta["multiscale"] and meta["rgb"]
    assert [lv.shape for lv in levels] == [(n, n, 3) for n in (4096, 2048, 1024, 512, 256)]
    assert levels[0].chunksize == (256, 256, 3), "one dask chunk per TIFF tile"
    under = _tile_bytes(path, range(4, 6), range(4, 6))
    with ProcessReads() as region:
        full = np.asarray(levels[0][1024:1536, 1024:1536])
    assert under <= region.bytes < under + one_tile, "a 512 x 512 region reads the 4 tiles under it"
    with ProcessReads() as coarse:
        half = np.asarray(levels[1][512:768, 512:768])
    assert under <= coarse.bytes < under + one_tile, "level 1 is computed from the tiles under the region only"
    np.testing.assert_array_equal(half, downsample_mean(full))


def test_viewer_shows_a_single_level_bigtiff_as_multiscale_and_hints_once(make_napari_viewer, tmp_path):
    path = tmp_path / "scan.tif"
    _tiled_bigtiff(path)
    viewer = make_napari_viewer()

    with pytest.warns(UserWarning, match=r"scan\.tif has no pyramid; zooming out reads the whole image") as hints:
        viewer.open(str(path), plugin="napari-hires")
        viewer.open(str(path), plugin="napari-hires")

    assert len([w for w in hints if "no pyramid" in str(w.message)]) == 1, "the hint is given once per file"
    layer = viewer.layers[0]
    assert layer.multiscale and layer.rgb and len(layer.data) == 5 and layer.data[0].shape == (4096, 4096, 3)


def test_small_strip_tiff_stays_one_level_without_a_hint(tmp_path, recwarn):
    tifffile.imwrite(tmp_path / "small.tif", RNG.integers(0, 255, (2048, 1024), dtype=np.uint8))

    (data, meta, _), = read_layers(str(tmp_path / "small.tif"))

    assert not meta["multiscale"] and data.shape == (2048, 1024)
    assert not [w for w in recwarn if "pyramid" in str(w.message)]


def test_large_uncompressed_strip_tiff_is_read_in_tiles(tmp_path):
    data = RNG.integers(0, 60000, (3000, 2500), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "strips.tif", data)
    warm = tmp_path / "warm.tif"
    tifffile.imwrite(warm, data[:2100, :2100])
    open_image(warm).levels[0][:8, :8].compute()

    pyr = open_image(tmp_path / "strips.tif")
    with ProcessReads() as region:
        block = pyr.levels[0][1000:1100, 1000:1100].compute()

    np.testing.assert_array_equal(block, data[1000:1100, 1000:1100])
    assert region.bytes < data.nbytes // 8, "not the whole image for a small region"


def test_png_and_jpeg(tmp_path):
    rgb = RNG.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.jpg")

    png = open_image(tmp_path / "photo.png")
    jpg = open_image(tmp_path / "gray.jpg")

    assert png.axes == "yxc" and png.rgb
    np.testing.assert_array_equal(png.levels[0].compute(), rgb)
    assert jpg.axes == "yx" and jpg.shape == (60, 80) and jpg.contrast_limits is not None


# ---------------------------------------------------------------------------------------------- get_reader / napari
def test_get_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "empty.zarr").mkdir()
    zarr.open_group(tmp_path / "plate.zarr", mode="w").attrs["plate"] = {"wells": []}

    for name in ("notes.txt", "table.csv", "missing.tif", "empty.zarr", "plate.zarr"):
        assert get_reader(str(tmp_path / name)) is None, name
        assert not can_read(tmp_path / name)


def test_get_reader_accepts_good_files_and_lists(tmp_path):
    gray = RNG.integers(0, 255, (64, 64), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", gray)
    path = write_ome_zarr(tmp_path / "b.zarr", gray, "yx", "0.5")

    assert callable(get_reader(str(tmp_path / "a.tif")))
    reader = get_reader([str(tmp_path / "a.tif"), str(path)])
    layers = reader([str(tmp_path / "a.tif"), str(path)])
    assert [meta["name"] for _, meta, _ in layers] == ["a", "b"]


def test_viewer_opens_ome_zarr_with_labels_and_tiff_pyramid(make_napari_viewer, tmp_path):
    data = RNG.integers(0, 255, (256, 192), dtype=np.uint8)
    zpath = write_ome_zarr(tmp_path / "img.ome.zarr", data, "yx", "0.5", labels=_labels_image())
    tpath = tmp_path / "rgb.ome.tif"
    _write_subifd_pyramid(tpath, RNG.integers(0, 255, (256, 192, 3), dtype=np.uint8), "rgb", {"axes": "YXS"})
    viewer = make_napari_viewer()

    viewer.open(str(zpath), plugin="napari-hires")
    viewer.open(str(tpath), plugin="napari-hires")

    kinds = [(layer.name, type(layer).__name__, layer.multiscale) for layer in viewer.layers]
    assert kinds == [("img", "Image", True), ("cells", "Labels", True), ("rgb", "Image", True)]
    assert viewer.layers["rgb"].rgb and len(viewer.layers["img"].data) == 3


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_corrupt_metadata_json_names_the_file(tmp_path, version):
    path = write_ome_zarr(tmp_path / "bad.zarr", np.zeros((64, 64), np.uint8), "yx", version)
    _meta_file(path, version).write_text('{"multiscales": [')

    assert callable(get_reader(str(path))), "a broken store of ours gets a clear error, not 'no reader'"
    with pytest.raises(ImageReadError, match=f"{_meta_file(path, version).name}.*not valid JSON") as info:
        open_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_missing_level_array_is_named(tmp_path, version):
    path = write_ome_zarr(tmp_path / "gap.zarr", np.zeros((128, 128), np.uint8), "yx", version)
    shutil.rmtree(path / "s1")

    with pytest.raises(ImageReadError, match=r"gap\.zarr/s1 is listed in multiscales but missing"):
        open_image(path)


def test_metadata_against_the_spec_is_reported_by_ome_zarr_models(tmp_path):
    path = write_ome_zarr(tmp_path / "odd.zarr", np.zeros((64, 64), np.uint8), "yx", "0.4")
    attrs = json.loads((path / ".zattrs").read_text())
    attrs["multiscales"][0]["axes"][0]["type"] = "channel"  # 0.4 needs 2 or 3 space axes
    (path / ".zattrs").write_text(json.dumps(attrs))

    with pytest.raises(ImageReadError, match="does not follow OME-NGFF 0.4") as info:
        open_image(path)
    assert "odd.zarr" in str(info.value)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_corrupt_chunk_raises_naming_file_and_chunk_when_read(tmp_path, version):
    path = write_ome_zarr(tmp_path / "chunky.zarr", RNG.integers(0, 255, (128, 128), dtype=np.uint8), "yx", version)
    chunk = path / "s0" / ("1/0" if version == "0.4" else "c/1/0")
    chunk.write_bytes(b"definitely not zstd" * 5)

    pyr = open_image(path)  # opening stays lazy and fine
    pyr.levels[0][:64].compute()  # other chunks still read
    with pytest.raises(ImageReadError) as info:
        pyr.levels[0].compute()
    assert str(chunk) in str(info.value)


def test_truncated_tiff(tmp_path):
    path = tmp_path / "cut.ome.tif"
    _write_subifd_pyramid(path, RNG.integers(0, 255, (256, 256, 3), dtype=np.uint8), "rgb", {"axes": "YXS"})
    whole = path.read_bytes()

    path.write_bytes(whole[:100])
    with pytest.raises(ImageReadError, match="cut.ome.tif.*truncated"):
        open_image(path)

    path.write_bytes(whole[: len(whole) // 2])  # the IFDs survive at the start, the last tiles do not
    pyr = open_image(path)
    with pytest.raises(ImageReadError, match=r"cut\.ome\.tif \(level 0\)"):
        pyr.levels[0].compute()


def test_nonexistent_path_is_file_not_found(tmp_path):
    missing = tmp_path / "nowhere.ome.zarr"
    with pytest.raises(FileNotFoundError, match="nowhere.ome.zarr"):
        open_image(missing)
    with pytest.raises(FileNotFoundError, match="nowhere.ome.zarr"):
        open_labels(missing)
