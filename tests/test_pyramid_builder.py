"""The OME-Zarr 0.5 writer and the pyramid builder, on real TIFF and zarr files in tmp_path."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_hires.cli import main
from napari_hires.errors import HiresError, ImageReadError, OutputExistsError
from napari_hires.io.build_state import is_incomplete
from napari_hires.io.downsample import downsample_mean, downsample_mode
from napari_hires.io.ome_zarr_writer import BLOCK_SIDE, MAX_IN_FLIGHT, write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.pyramid_builder import build_pyramid


# ---------------------------------------------------------------------------------------------------- helpers


def reference_mean(a: np.ndarray) -> np.ndarray:
    """Mean of each 2x2 window of the last two axes over the pixels that exist, rounded half up for integers."""
    h, w = a.shape[-2:]
    padded = np.full(a.shape[:-2] + (h + h % 2, w + w % 2), np.nan)
    padded[..., :h, :w] = a
    windows = padded.reshape(a.shape[:-2] + ((h + 1) // 2, 2, (w + 1) // 2, 2))
    mean = np.nanmean(windows, axis=(-3, -1))
    if np.issubdtype(a.dtype, np.integer):
        mean = np.floor(mean + 0.5)
    return mean.astype(a.dtype)


def expected_yx_levels(h: int, w: int, min_size: int) -> list[tuple[int, int]]:
    levels = [(h, w)]
    while max(levels[-1]) > min_size:
        levels.append((math.ceil(levels[-1][0] / 2), math.ceil(levels[-1][1] / 2)))
    return levels


def zarr_pyramid(path: Path) -> Pyramid:
    arr = zarr.open_array(path, mode="r")
    return Pyramid([da.from_zarr(arr)], "cyx", (1.0, 0.25, 0.25), (0.0, 10.0, 20.0), name="fluo",
                   channel_names=["dapi", "gfp"], units={"y": "µm", "x": "µm"}, source=str(path))


def zarr_codecs(array_dir: Path) -> list[dict]:
    return json.loads((array_dir / "zarr.json").read_text())["codecs"]


@pytest.fixture(scope="module")
def rgb_tiff(tmp_path_factory) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (3000, 2000, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("tiff") / "slide.tif"
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb")
    return path, img


@pytest.fixture(scope="module")
def built_rgb(rgb_tiff, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "slide.zarr"
    build_pyramid(rgb_tiff[0], out)
    return out


@pytest.fixture
def cyx_zarr(tmp_path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(2)
    data = rng.integers(0, 65536, (2, 1100, 901), dtype=np.uint16)
    path = tmp_path / "fluo_source.zarr"
    arr = zarr.create_array(path, shape=data.shape, dtype=data.dtype, chunks=(1, 256, 256),
                            dimension_names=("c", "y", "x"))
    arr[:] = data
    return path, data


# ---------------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_downsample_mean_is_the_window_mean_with_odd_edges(dtype):
    rng = np.random.default_rng(3)
    block = (rng.normal(0, 60, (3, 7, 9)) + (100 if dtype == np.uint8 else 0)).clip(-1000, 255).astype(dtype)
    got = downsample_mean(block, 2, axes="cyx")
    assert got.dtype == block.dtype and got.shape == (3, 4, 5)
    np.testing.assert_allclose(got, reference_mean(block), rtol=1e-6)
    # "yx..." puts y and x first, the rest untouched
    np.testing.assert_array_equal(downsample_mean(np.moveaxis(block, 0, -1)), np.moveaxis(got, 0, -1))


def test_downsample_mean_rounds_integers_half_up():
    block = np.array([[1, 2], [1, 2]], dtype=np.uint8)  # mean 1.5
    assert downsample_mean(block, axes="yx")[0, 0] == 2


def test_downsample_mode_majority_ties_and_odd_edges():
    block = np.array(
        [[1, 1, 2, 3, 5],
         [1, 2, 2, 3, 5],
         [0, 0, 4, 4, 6],
         [7, 0, 4, 0, 6],
         [9, 8, 9, 9, 9]],
        dtype=np.uint16,
    )
    expected = np.array([[1, 3, 5], [0, 4, 6], [9, 9, 9]], dtype=np.uint16)  # 2-2 ties go to the larger value
    np.testing.assert_array_equal(downsample_mode(block, 2, axes="yx"), expected)
    stacked = np.stack([block, block + 1])
    np.testing.assert_array_equal(downsample_mode(stacked, 2, axes="zyx"), np.stack([expected, expected + 1]))
    even = block[:4, :4]  # even sizes take the quarter-view path; odd ones the general window count
    np.testing.assert_array_equal(downsample_mode(even, 2, axes="yx"), expected[:2, :2])


@pytest.mark.parametrize("axes, shape", [("yx", (64, 96)), ("cyx", (2, 32, 48)), ("yxc", (32, 48, 3))])
def test_downsample_mode_even_path_equals_the_general_count(axes, shape):
    rng = np.random.default_rng(1)
    for classes in (2, 3, 6):
        block = rng.integers(0, classes, shape).astype(np.uint8)
        iy = axes.index("y")
        odd = np.concatenate([block, np.take(block, [0], axis=iy)], axis=iy)  # one more row: the general path
        general = np.take(downsample_mode(odd, 2, axes), range(shape[iy] // 2), axis=iy)
        np.testing.assert_array_equal(downsample_mode(block, 2, axes), general)


# ---------------------------------------------------------------------------------------------------- building


def test_single_level_tiff_becomes_a_chunked_zstd_pyramid(built_rgb, rgb_tiff):
    _, img = rgb_tiff
    root = zarr.open_group(built_rgb, mode="r")
    ome = root.attrs["ome"]
    datasets = ome["multiscales"][0]["datasets"]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "y", "x"]
    expected = expected_yx_levels(3000, 2000, 256)
    assert [root[d["path"]].shape for d in datasets] == [(3, h, w) for h, w in expected]
    assert [d["coordinateTransformations"][0]["scale"] for d in datasets] == [
        [1.0, 2.0**k, 2.0**k] for k in range(len(expected))
    ]
    assert root["0"].chunks == (3, 512, 512)
    assert [c["name"] for c in zarr_codecs(built_rgb / "0")] == ["bytes", "zstd"]
    level0 = root["0"][:]
    np.testing.assert_array_equal(level0, np.moveaxis(img, -1, 0))
    level1 = root["1"][:]
    np.testing.assert_array_equal(level1, reference_mean(level0))
    np.testing.assert_array_equal(root["2"][:], reference_mean(level1))
    coarsest = root[datasets[-1]["path"]][:]
    windows = [c["window"] for c in ome["omero"]["channels"]]
    assert [(w["start"], w["end"]) for w in windows] == [(coarsest[i].min(), coarsest[i].max()) for i in range(3)]
    assert root.attrs["napari_hires"]["state"] == "complete"


def test_rgb_round_trips_as_one_rgb_layer(built_rgb, rgb_tiff):
    from napari_hires.io.readers import open_image

    pyramid = open_image(built_rgb)
    assert pyramid.axes == "yxc" and pyramid.rgb
    np.testing.assert_array_equal(pyramid.levels[0].compute(), rgb_tiff[1])
    (data, kwargs, layer_type), = pyramid.layer_data()
    assert layer_type == "image" and kwargs["rgb"] and len(data) == len(pyramid.levels)


def test_result_validates_and_opens_with_ome_zarr_py(built_rgb):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05 import Image

    image = Image.from_zarr(zarr.open_group(built_rgb, mode="r"))
    assert len(image.datasets[0]) == 5
    node = next(iter(Reader(parse_url(str(built_rgb)))()))
    assert len(node.data) == 5
    assert node.data[1].shape == (3, 1500, 1000)


def test_uint16_cyx_zarr_keeps_axes_units_translation_and_means(cyx_zarr, tmp_path):
    path, data = cyx_zarr
    out = tmp_path / "fluo.zarr"
    calls = []
    build_pyramid(zarr_pyramid(path), out, chunk=256, min_size=200, progress=lambda d, t: calls.append((d, t)))
    root = zarr.open_group(out, mode="r")
    ms = root.attrs["ome"]["multiscales"][0]
    assert [(a["name"], a["type"], a.get("unit")) for a in ms["axes"]] == [
        ("c", "channel", None), ("y", "space", "micrometer"), ("x", "space", "micrometer")
    ]
    assert ms["datasets"][1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 0.5, 0.5]}, {"type": "translation", "translation": [0.0, 10.0, 20.0]}
    ]
    shapes = [root[d["path"]].shape for d in ms["datasets"]]
    assert shapes == [(2, h, w) for h, w in expected_yx_levels(1100, 901, 200)]
    assert root["0"].chunks == (1, 256, 256) and root["0"].dtype == np.uint16
    np.testing.assert_array_equal(root["0"][:], data)
    np.testing.assert_array_equal(root["1"][:], reference_mean(data))
    assert [c["label"] for c in root.attrs["ome"]["omero"]["channels"]] == ["dapi", "gfp"]
    done = [d for d, _ in calls]
    assert done == list(range(len(calls))) and calls[-1][0] == calls[-1][1] > len(shapes)


def test_labels_use_mode_and_carry_class_names_and_colors(tmp_path):
    rng = np.random.default_rng(4)
    coarse = rng.integers(0, 5, (301, 257), dtype=np.uint8)
    full = np.kron(coarse, np.ones((2, 2), dtype=np.uint8))[:601, :513]  # odd edges
    noisy = full.copy()
    noisy[0:600:2, 0:512:2] = rng.integers(0, 5, (300, 256))  # one pixel of each 2x2 window disagrees
    names = {1: "tumor", 2: "stroma", 3: "fat", 4: "necrosis"}
    colors = {k: (k / 4, 0.0, 1 - k / 4, 1.0) for k in names}
    labels = Pyramid([da.from_array(noisy, chunks=128)], "yx", (1.0, 1.0), (0.0, 0.0), name="tissue",
                     kind="labels", class_names=names, class_colors=colors)
    image = Pyramid([da.zeros((601, 513), dtype=np.uint8, chunks=256)], "yx", (1.0, 1.0), (0.0, 0.0))
    out = Path(write_ome_zarr(image, tmp_path / "lab.zarr", labels={"tissue": labels}, chunk=256,
                              derive_levels=True, min_size=64))
    root = zarr.open_group(out, mode="r")
    assert root["labels"].attrs["ome"]["labels"] == ["tissue"]
    group = root["labels/tissue"]
    np.testing.assert_array_equal(group["1"][:], coarse)
    assert len(list(group.array_keys())) == len(list(root.array_keys()))
    label_meta = group.attrs["ome"]["image-label"]
    assert {p["label-value"]: p["class"] for p in label_meta["properties"]} == names
    assert {c["label-value"]: c["rgba"] for c in label_meta["colors"]}[4] == [255, 0, 0, 255]

    from ome_zarr_models.v05 import Image

    assert Image.from_zarr(root).labels.label_paths == ["tissue"]


def test_provided_levels_are_written_as_given(tmp_path):
    level0 = np.arange(600 * 400, dtype=np.float32).reshape(600, 400)
    level1 = np.full((300, 200), 7.0, dtype=np.float32)  # not a mean of level 0: must be kept as is
    pyr = Pyramid([da.from_array(level0, chunks=256), da.from_array(level1, chunks=256)], "yx",
                  (2.0, 2.0), (0.0, 0.0))
    root = zarr.open_group(write_ome_zarr(pyr, tmp_path / "given.zarr", chunk=256), mode="r")
    assert sorted(root.array_keys()) == ["0", "1"]  # zarr does not promise an order
    np.testing.assert_array_equal(root["1"][:], level1)
    scales = [d["coordinateTransformations"][0]["scale"] for d in root.attrs["ome"]["multiscales"][0]["datasets"]]
    assert scales == [[2.0, 2.0], [4.0, 4.0]]


def test_sharded_output_stores_one_file_per_shard(rgb_tiff, tmp_path):
    out = tmp_path / "sharded.zarr"
    build_pyramid(rgb_tiff[0], out, chunk=256, shard=1024, min_size=1024)
    sharding = zarr_codecs(out / "0")[0]
    assert sharding["name"] == "sharding_indexed"
    assert sharding["configuration"]["chunk_shape"] == [3, 256, 256]
    assert json.loads((out / "0" / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"] == [
        3, 1024, 1024
    ]
    files = sorted(p.relative_to(out / "0" / "c") for p in (out / "0" / "c").rglob("*") if p.is_file())
    assert files == [Path("0", str(y), str(x)) for y in range(3) for x in range(2)]  # ceil(3000/1024) x ceil(2000/1024)
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["0"][:, 1000:1100, 1500:1600],
                                  np.moveaxis(rgb_tiff[1][1000:1100, 1500:1600], -1, 0))
    with pytest.raises(HiresError, match="multiple of chunk"):
        build_pyramid(rgb_tiff[0], tmp_path / "bad.zarr", chunk=512, shard=768)


def test_existing_output_is_refused_without_overwrite(cyx_zarr, tmp_path):
    out = tmp_path / "fluo.zarr"
    build_pyramid(cyx_zarr[0], out)
    with pytest.raises(OutputExistsError, match="--overwrite") as info:
        build_pyramid(cyx_zarr[0], out)
    assert str(out) in str(info.value)
    (out / "stale").write_text("from an earlier run")
    build_pyramid(cyx_zarr[0], out, overwrite=True)
    assert not (out / "stale").exists()
    assert zarr.open_group(out, mode="r").attrs["napari_hires"]["state"] == "complete"
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(OutputExistsError, match="not a zarr store"):
        build_pyramid(cyx_zarr[0], precious, overwrite=True)
    assert (precious / "thesis.txt").exists()


_SLOW_BUILD = """
import sys, dask.array as da, numpy as np
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.pyramid_builder import build_pyramid
level = da.random.default_rng(0).integers(0, 65535, (8192, 8192), dtype=np.uint16, chunks=256)
build_pyramid(Pyramid([level], "yx", (1.0, 1.0), (0.0, 0.0)), sys.argv[1], chunk=256)
"""


@pytest.fixture(scope="module")
def killed_store(tmp_path_factory) -> Path:
    """A build SIGKILLed once its first level-0 chunks are on disk."""
    out = tmp_path_factory.mktemp("killed") / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(out)])
    try:
        chunk_dir = out / "0" / "c"
        while proc.poll() is None and not (chunk_dir.exists() and any(chunk_dir.rglob("*"))):
            time.sleep(0.02)
        assert proc.poll() is None, "the build finished before it could be interrupted; make the image larger"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    return out


def test_killed_build_leaves_a_store_marked_incomplete(killed_store):
    root = zarr.open_group(killed_store, mode="r")
    assert "ome" not in root.attrs
    assert root.attrs["napari_hires"] == {"state": "writing"}
    assert is_incomplete(root.attrs.asdict())


def test_reader_refuses_a_killed_build(killed_store):
    from napari_hires.io.readers import open_image

    with pytest.raises(ImageReadError, match="incomplete"):
        open_image(killed_store)


def test_memory_is_bounded_by_blocks_in_flight_not_image_size(tmp_path):
    alive = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def released() -> None:
        with lock:
            alive["now"] -= 1

    def make_chunk(block_info=None):
        shape = block_info[None]["chunk-shape"]
        block = np.full(shape, block_info[None]["chunk-location"][0] % 251, dtype=np.uint16)
        with lock:
            alive["now"] += 1
            alive["peak"] = max(alive["peak"], alive["now"])
        weakref.finalize(block, released)
        return block

    side, source_chunk, chunk = 4096, 256, 256
    level = da.map_blocks(make_chunk, dtype=np.uint16, chunks=((source_chunk,) * (side // source_chunk),) * 2)
    build_pyramid(Pyramid([level], "yx", (1.0, 1.0), (0.0, 0.0)), tmp_path / "big.zarr", chunk=chunk)
    chunks_per_block = (BLOCK_SIDE // source_chunk) ** 2
    total_chunks = (side // source_chunk) ** 2
    assert alive["now"] == 0
    assert 0 < alive["peak"] <= MAX_IN_FLIGHT * chunks_per_block < total_chunks


# ---------------------------------------------------------------------------------------------------- CLI and widget


def test_cli_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert main(["pyramid", str(tmp_path / "missing.tif"), str(tmp_path / "out.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.tif" in err and "\n" not in err
    assert not (tmp_path / "out.zarr").exists()


def test_cli_builds_a_pyramid_from_a_tiff(rgb_tiff, tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    assert main(["pyramid", str(rgb_tiff[0]), str(out), "--chunk", "1024", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    root = zarr.open_group(out, mode="r")
    assert root["0"].chunks == (3, 1024, 1024) and len(root.attrs["ome"]["multiscales"][0]["datasets"]) == 5
    assert main(["pyramid", str(rgb_tiff[0]), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.fixture(scope="module")
def not_labels(tmp_path_factory) -> dict[str, Path]:
    """skimage's astronaut (RGB uint8) and camera as float32 in [0, 1], as TIFFs written by tifffile."""
    from skimage import data

    folder = tmp_path_factory.mktemp("not_labels")
    tifffile.imwrite(folder / "astronaut.tif", data.astronaut(), photometric="rgb")
    tifffile.imwrite(folder / "camera.tif", data.camera().astype(np.float32) / 255)
    return {"rgb": folder / "astronaut.tif", "float": folder / "camera.tif"}


@pytest.mark.parametrize("image", ["rgb", "float"])
def test_labels_kind_of_an_rgb_or_float_image_is_refused_before_writing(not_labels, tmp_path, capsys, image):
    out = tmp_path / "labels.zarr"
    assert main(["pyramid", str(not_labels[image]), str(out), "--kind", "labels", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "single-channel integers" in err and "--kind image" in err
    assert not out.exists()
    with pytest.raises(HiresError, match="single-channel integers"):
        build_pyramid(not_labels[image], out, kind="labels")
    assert not out.exists()
    assert main(["pyramid", str(not_labels[image]), str(out), "--kind", "image", "--quiet"]) == 0


def test_widget_refuses_labels_kind_of_an_rgb_image(make_napari_viewer, qtbot, not_labels, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-hires", "Build pyramid")
    out = tmp_path / "astronaut_labels.zarr"
    widget.source.value = not_labels["rgb"]
    widget.output.value = out
    widget.kind.value = "labels"
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.value.startswith(("wrote", "error")), timeout=20000)
    assert widget.status.value.startswith("error") and "single-channel integers" in widget.status.value
    assert not out.exists()


def test_widget_builds_a_store_from_the_napari_dock(make_napari_viewer, qtbot, cyx_zarr, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-hires", "Build pyramid")
    out = tmp_path / "from_widget.zarr"
    widget.source.value = cyx_zarr[0]
    widget.output.value = out
    widget.chunk.value = 256
    widget.run_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.value.startswith(("wrote", "error")), timeout=20000)
    assert widget.status.value == f"wrote {out}"
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=5000)
    assert widget.progress.value == widget.progress.max > 1
    assert len(zarr.open_group(out, mode="r").attrs["ome"]["multiscales"][0]["datasets"]) == 4
    widget.run_button.clicked.emit()  # same output again, without overwrite: a readable error, no crash
    qtbot.waitUntil(lambda: widget.status.value.startswith("error"), timeout=20000)
    assert "--overwrite" in widget.status.value
