"""Export of labels to OME-Zarr, pyramidal TIFF and QuPath GeoJSON, each read back with another library."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import shapely
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from rasterio.features import rasterize
from scipy import ndimage

from napari_hires.cli import main
from napari_hires.errors import HiresError, OutputExistsError
from napari_hires.io.downsample import downsample_mode
from napari_hires.io.ome_zarr_writer import add_labels, write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.readers import open_labels
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.labels.export import export_labels, labels_from_layer_data, open_label_source

HAND_NAMES = {1: "tumour", 2: "stroma", 3: "nucleus"}
HAND_COLORS = {1: (1.0, 0.0, 0.0, 1.0), 2: (0.0, 0.5, 1.0, 1.0), 3: (1.0, 1.0, 0.0, 1.0)}
BLOCK = 64


def hand_made() -> np.ndarray:
    """Objects with holes, crossing block borders (block 64), touching diagonally, and an unnamed uint32 value."""
    a = np.zeros((150, 170), np.uint32)
    a[10:40, 40:90] = 1          # crosses x = 64 ...
    a[18:30, 55:75] = 0          # ... with a hole that crosses it too
    a[80:100, 10:30] = 2         # a ring inside one block ...
    a[85:95, 15:25] = 0
    a[87:93, 17:23] = 3          # ... with an island in its hole
    a[50:140, 100:110] = 3       # an L over four blocks
    a[130:140, 60:110] = 3
    a[0, 0] = a[1, 1] = 1        # diagonal neighbours: two objects (4-connectivity)
    a[145:150, 160:170] = 70000  # a value without a class name
    return a


def hand_pyramid() -> Pyramid:
    return Pyramid(levels=[da.from_array(hand_made(), chunks=50)], axes="yx", scale=(1.0, 1.0),
                   translation=(0.0, 0.0), name="hand", kind="labels", class_names=dict(HAND_NAMES),
                   class_colors=dict(HAND_COLORS))


@pytest.fixture(scope="module")
def slide() -> tuple[Pyramid, np.ndarray]:
    """The synthetic slide's labels (4 classes incl. nuclei), rendered once and kept in memory for speed."""
    _, labels = synthetic_slide((2048, 2048))
    levels = [da.from_array(np.asarray(lv), chunks=512) for lv in labels.levels]
    return labels.with_levels(levels), np.asarray(levels[0])


def read_geojson(path: Path, values: dict[str, int]) -> list[tuple[shapely.Polygon, int, dict]]:
    """(polygon, label value, classification) of each feature, checking QuPath's feature layout on the way."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection"
    out = []
    for feature in doc["features"]:
        assert feature["type"] == "Feature"
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        geom = shapely.geometry.shape(feature["geometry"])
        assert geom.geom_type == "Polygon" and geom.is_valid
        out.append((geom, values[props["classification"]["name"]], props["classification"]))
    return out


def burn(polygons: list, shape: tuple[int, int], dtype: type) -> np.ndarray:
    return rasterize([(g, v) for g, v, _ in polygons], out_shape=shape, fill=0, dtype=dtype)


def objects_per_value(labels: np.ndarray) -> dict[int, int]:
    """Number of 4-connected objects of each non-zero value (scipy's default structure is 4-connected)."""
    return {int(v): ndimage.label(labels == v)[1] for v in np.unique(labels) if v != 0}


# ------------------------------------------------------------------------------------------------ GeoJSON


def test_geojson_hand_made_round_trips_exactly_with_one_polygon_per_object(tmp_path: Path) -> None:
    ref = hand_made()
    out = export_labels(hand_pyramid(), tmp_path / "hand.geojson", "geojson", block=BLOCK)
    polygons = read_geojson(Path(out), {**{n: v for v, n in HAND_NAMES.items()}, "70000": 70000})

    assert np.array_equal(burn(polygons, ref.shape, np.uint32), ref)
    counts: dict[int, int] = {}
    for _, value, _ in polygons:
        counts[value] = counts.get(value, 0) + 1
    assert counts == objects_per_value(ref)
    crossing = [g for g, v, _ in polygons if v == 1 and g.intersects(shapely.Point(45, 15))]
    assert len(crossing) == 1 and len(crossing[0].interiors) == 1
    assert crossing[0].bounds == (40, 10, 90, 40)
    assert crossing[0].interiors[0].bounds == (55, 18, 75, 30)
    ring = next(g for g, v, _ in polygons if v == 2)
    assert len(ring.interiors) == 1 and ring.area == 20 * 20 - 10 * 10
    classes = {c["name"]: c.get("color") for _, _, c in polygons}
    assert classes["tumour"] == [255, 0, 0] and classes["nucleus"] == [255, 255, 0] and classes["70000"] is None


def test_geojson_of_the_slide_covers_its_labelled_pixels(tmp_path: Path, slide) -> None:
    labels, ref = slide
    out = export_labels(labels, tmp_path / "slide.geojson", block=512)
    polygons = read_geojson(Path(out), {n: v for v, n in labels.class_names.items()})

    burnt = burn(polygons, ref.shape, np.uint8)
    assert (burnt == ref).mean() >= 0.999
    assert {v for _, v, _ in polygons} == {1, 2, 3}
    counts: dict[int, int] = {}
    for _, value, _ in polygons:
        counts[value] = counts.get(value, 0) + 1
    assert counts == objects_per_value(ref)


def test_trace_block_keeps_label_values_beyond_int32() -> None:
    from napari_hires.labels.geojson import trace_block

    block = np.zeros((8, 8), np.uint64)
    block[1:3, 1:4] = 2**40
    block[5:7, 2:8] = 7
    traced = sorted((value, polygon.bounds) for value, polygon in trace_block(block, y0=100, x0=200))
    assert traced == [(7, (202, 105, 208, 107)), (2**40, (201, 101, 204, 103))]


# ------------------------------------------------------------------------------------------------ TIFF


def test_tiff_holds_the_pyramid_levels(tmp_path: Path, slide) -> None:
    labels, ref = slide
    out = export_labels(labels, tmp_path / "slide.tif", "tiff")
    with tifffile.TiffFile(out) as tif:
        series = tif.series[0]
        assert tif.is_ome
        assert [lv.shape for lv in series.levels] == [lv.shape for lv in labels.levels]
        assert np.array_equal(series.levels[0].asarray(), ref)
        assert np.array_equal(series.levels[-1].asarray(), np.asarray(labels.levels[-1]))
        page = series.levels[0].keyframe
        assert page.is_tiled and page.tilewidth == 512 and page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_tiff_of_a_single_level_layer_gets_mode_downsampled_levels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    layer = np.kron(rng.integers(0, 5, (55, 65)), np.ones((20, 20))).astype(np.uint16)  # 1100 x 1300
    labels = labels_from_layer_data(layer, {"name": "painted"})
    out = export_labels(labels, tmp_path / "painted.ome.tiff", block=1024)
    with tifffile.TiffFile(out) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(1100, 1300), (550, 650), (275, 325)]
        assert np.array_equal(levels[0].asarray(), layer)
        assert np.array_equal(levels[1].asarray(), downsample_mode(layer))
        assert np.array_equal(levels[2].asarray(), downsample_mode(downsample_mode(layer)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["painted.ome.tiff"]  # no scratch store left


# ------------------------------------------------------------------------------------------------ OME-Zarr


def _label_nodes(path: Path) -> list:
    return [node for node in Reader(parse_url(str(path)))() if any(isinstance(s, Label) for s in node.specs)]


def test_ome_zarr_standalone_reads_back_with_ome_zarr_py(tmp_path: Path, slide) -> None:
    labels, ref = slide
    out = export_labels(labels, tmp_path / "slide_labels.zarr", "ome-zarr")
    (node,) = _label_nodes(Path(out))
    assert np.array_equal(np.asarray(node.data[0]), ref)
    assert node.data[1].shape == (1024, 1024)
    assert {v: p["class"] for v, p in node.metadata["properties"].items()} == labels.class_names
    assert node.metadata["color"][3] == pytest.approx(list(labels.class_colors[3]), abs=1 / 255)


def test_ome_zarr_inside_an_image_store(tmp_path: Path) -> None:
    image, truth = synthetic_slide((1024, 1024))
    store = write_ome_zarr(image, tmp_path / "slide.zarr", chunk=256)
    corrected = truth.with_levels([truth.levels[0].map_blocks(lambda b: np.where(b == 3, 0, b))])
    export_labels(corrected, None, "ome-zarr", image=store, name="corrected")

    (node,) = _label_nodes(Path(store) / "labels" / "corrected")
    expected = np.asarray(corrected.levels[0])
    assert np.array_equal(np.asarray(node.data[0]), expected)
    assert len(node.data) == len(zarr.open_group(store, mode="r").attrs["ome"]["multiscales"][0]["datasets"])
    assert node.metadata["properties"][2] == {"class": "epithelium"}
    assert list(open_labels(store)) == ["corrected"]

    with pytest.raises(OutputExistsError, match="labels/corrected"):
        export_labels(truth, store, "ome-zarr", image=store, name="corrected")
    export_labels(truth, None, "ome-zarr", image=store, name="corrected", overwrite=True)
    export_labels(truth, None, "ome-zarr", image=store, name="truth")
    stored = open_labels(store)
    assert list(stored) == ["corrected", "truth"]
    assert np.array_equal(np.asarray(stored["corrected"].levels[0]), np.asarray(truth.levels[0]))


def test_add_labels_refuses_a_misfit_and_lists_nothing_when_interrupted(tmp_path: Path) -> None:
    image, truth = synthetic_slide((512, 512))
    store = write_ome_zarr(image, tmp_path / "slide.zarr", chunk=256)
    with pytest.raises(HiresError, match="do not fit"):
        add_labels(store, "small", hand_pyramid())

    def stop(done: int, total: int) -> None:
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        add_labels(store, "ground_truth", truth, progress=stop)
    assert open_labels(store) == {}
    assert "ground_truth" not in zarr.open_group(store, mode="r").get("labels", {})


# ------------------------------------------------------------------------------------------------ safety


@pytest.mark.parametrize("name", ["out.geojson", "out.tif", "out.zarr"])
def test_an_interrupted_export_leaves_nothing_that_looks_whole(tmp_path: Path, name: str) -> None:
    labels = labels_from_layer_data(np.kron(hand_made(), np.ones((8, 8), np.uint32)))  # 1200 x 1360

    def stop(done: int, total: int) -> None:
        if done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_labels(labels, tmp_path / name, block=256, progress=stop)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def big_store(tmp_path_factory) -> Path:
    """A single-level 2400 x 2720 label store: exporting it takes seconds, long enough to be killed midway."""
    big = np.kron(hand_made(), np.ones((16, 16), np.uint32))
    pyr = Pyramid(levels=[da.from_array(big, chunks=512)], axes="yx", scale=(1.0, 1.0), translation=(0.0, 0.0),
                  name="big", kind="labels", class_names=dict(HAND_NAMES))
    return Path(write_ome_zarr(pyr, tmp_path_factory.mktemp("big") / "big.zarr"))


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def export_process(source: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "napari_hires.cli", "export", str(source), str(out),
                             "--block", "256", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_partial(proc: subprocess.Popen, folder: Path) -> None:
    """Poll until the export has a .partial-* temporary beside its output; it must still be running then."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not any(
            n.startswith(".partial-") for n in hidden(folder)):
        time.sleep(0.01)
    assert proc.poll() is None, "the export finished before it could be interrupted; make the labels larger"


def same_export(a: Path, b: Path) -> bool:
    """Whether two exports hold the same thing: GeoJSON text, TIFF levels, OME-Zarr levels and metadata."""
    if a.suffix == ".geojson":
        return a.read_text(encoding="utf-8") == b.read_text(encoding="utf-8")
    if a.suffix == ".tif":
        with tifffile.TiffFile(a) as ta, tifffile.TiffFile(b) as tb:
            la, lb = ta.series[0].levels, tb.series[0].levels
            return len(la) == len(lb) and all(np.array_equal(x.asarray(), y.asarray()) for x, y in zip(la, lb))
    ga, gb = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    names = [d["path"] for d in ga.attrs["ome"]["multiscales"][0]["datasets"]]
    return ga.attrs.asdict() == gb.attrs.asdict() and all(np.array_equal(ga[n][:], gb[n][:]) for n in names)


@pytest.mark.parametrize("name", ["killed.geojson", "killed.tif", "killed.zarr"])
def test_a_killed_export_leaves_no_partial_files_after_the_next_run(tmp_path: Path, big_store: Path,
                                                                    name: str) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    proc = export_process(big_store, folder / name)
    try:
        wait_for_partial(proc, folder)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
    assert any(n.startswith(".partial-") for n in hidden(folder)) and not (folder / name).exists()

    rerun = export_process(big_store, folder / name)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err.decode()
    assert hidden(folder) == [] and [p.name for p in folder.iterdir()] == [name]
    reference = export_labels(open_label_source(big_store), tmp_path / name, block=256)
    assert same_export(folder / name, Path(reference))


def test_the_partial_file_of_a_running_export_is_left_alone(tmp_path: Path, big_store: Path) -> None:
    proc = export_process(big_store, tmp_path / "running.geojson")
    try:
        wait_for_partial(proc, tmp_path)
        running = hidden(tmp_path)
        export_labels(hand_pyramid(), tmp_path / "other.geojson", block=BLOCK)
        assert proc.poll() is None, "the running export ended before the other one; make the labels larger"
        assert set(running) <= set(hidden(tmp_path))
    finally:
        proc.kill()
        proc.wait()


def test_existing_outputs_and_bad_inputs_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "hand.geojson"
    export_labels(hand_pyramid(), out, block=BLOCK)
    with pytest.raises(OutputExistsError, match="already exists"):
        export_labels(hand_pyramid(), out)
    out.write_text("not ours")
    export_labels(hand_pyramid(), out, overwrite=True)
    assert json.loads(out.read_text())["type"] == "FeatureCollection"
    with pytest.raises(HiresError, match="unknown export format"):
        export_labels(hand_pyramid(), tmp_path / "x.png", "png")
    with pytest.raises(HiresError, match="cannot tell the export format"):
        export_labels(hand_pyramid(), tmp_path / "x.png")
    with pytest.raises(HiresError, match="must be integers"):
        export_labels(np.zeros((10, 10), np.float32), tmp_path / "f.tif")
    with pytest.raises(HiresError, match="2-d labels"):
        export_labels(np.zeros((2, 10, 10), np.uint8), tmp_path / "z.geojson")
    with pytest.raises(HiresError, match="does not exist"):
        export_labels(hand_pyramid(), tmp_path / "missing" / "x.tif")


def int64_labels() -> np.ndarray:
    """Nuclei-like blobs numbered by skimage.measure.label, as int64 (numpy's default int, older skimage's output)."""
    from skimage.measure import label

    rng = np.random.default_rng(3)
    mask = np.kron(rng.random((60, 70)) > 0.6, np.ones((5, 5), bool))  # 300 x 350, several hundred objects
    labels = label(mask, connectivity=1).astype(np.int64)
    assert labels.max() > 255
    return labels


def test_int64_labels_are_written_to_tiff_as_the_smallest_unsigned_type(tmp_path: Path) -> None:
    labels = int64_labels()
    with pytest.warns(UserWarning, match=r"int64 labels 0\.\.\d+\b.* uint16"):
        out = export_labels(labels, tmp_path / "nuclei.tif")
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].dtype == np.uint16
        assert np.array_equal(tif.series[0].asarray(), labels)


@pytest.mark.parametrize("value, expected", [(-1, r"from -1 to \d+.*negative"),
                                             (2**40, r"up to 1099511627776.*uint32")])
def test_int64_labels_that_fit_no_tiff_type_are_refused(tmp_path: Path, value: int, expected: str) -> None:
    labels = int64_labels()
    labels[0, 0] = value
    with pytest.raises(HiresError, match=expected + ".*ome-zarr or geojson"):
        export_labels(labels, tmp_path / "nuclei.tif")
    assert list(tmp_path.iterdir()) == []
    export_labels(labels, tmp_path / "nuclei.zarr")  # OME-Zarr keeps 64-bit labels as they are
    assert np.array_equal(np.asarray(open_label_source(tmp_path / "nuclei.zarr").levels[0]), labels)


def test_cli_exports_int64_labels_to_tiff_with_a_one_line_note(tmp_path: Path) -> None:
    labels = int64_labels()
    source = tmp_path / "nuclei_int64.tif"
    tifffile.imwrite(source, labels)
    result = subprocess.run([sys.executable, "-m", "napari_hires.cli", "export", str(source),
                             str(tmp_path / "nuclei.tif"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "warning:" in result.stderr and "uint16" in result.stderr
    assert np.array_equal(tifffile.imread(tmp_path / "nuclei.tif"), labels)
    labels[0, 0] = -7
    tifffile.imwrite(source, labels)
    result = subprocess.run([sys.executable, "-m", "napari_hires.cli", "export", str(source),
                             str(tmp_path / "negative.tif"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "error:" in result.stderr and "negative" in result.stderr
    assert not (tmp_path / "negative.tif").exists()


def test_layer_attributes_give_class_names_and_colours() -> None:
    from napari.utils.colormaps import DirectLabelColormap

    colors = {None: (0, 0, 0, 1), 0: (0, 0, 0, 0), 1: (1, 0, 0, 1), 2: (0, 0, 1, 1)}
    labels = labels_from_layer_data(
        [np.zeros((64, 64), np.uint8), np.zeros((32, 32), np.uint8)],
        {"name": "fixed", "features": {"index": [0, 1, 2], "class": ["background", "tumour", "stroma"]},
         "colormap": DirectLabelColormap(color_dict=colors), "scale": (0.5, 0.5)},
    )
    assert labels.name == "fixed" and len(labels.levels) == 2 and labels.scale == (0.5, 0.5)
    assert labels.class_names == {0: "background", 1: "tumour", 2: "stroma"}
    assert labels.class_colors[1] == (1.0, 0.0, 0.0, 1.0) and None not in labels.class_colors


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_exports_a_label_store(tmp_path: Path, capsys) -> None:
    source = write_ome_zarr(hand_pyramid(), tmp_path / "hand.zarr")
    out = tmp_path / "hand.geojson"
    assert main(["export", source, str(out), "--format", "geojson", "--block", "64", "--quiet"]) == 0
    polygons = read_geojson(out, {**{n: v for v, n in HAND_NAMES.items()}, "70000": 70000})
    assert np.array_equal(burn(polygons, (150, 170), np.uint32), hand_made())
    assert main(["export", source, str(tmp_path / "hand.tif"), "--quiet"]) == 0
    with tifffile.TiffFile(tmp_path / "hand.tif") as tif:
        assert np.array_equal(tif.series[0].levels[0].asarray(), hand_made())
    capsys.readouterr()

    assert main(["export", source, str(out), "--format", "geojson", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert main(["export", source, str(tmp_path / "x.png"), "--format", "png", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown export format 'png'" in err


def test_cli_adds_labels_to_an_image(tmp_path: Path) -> None:
    image, truth = synthetic_slide((512, 512))
    source = write_ome_zarr(image, tmp_path / "a.zarr", labels={"ground_truth": truth}, chunk=256)
    target = write_ome_zarr(image, tmp_path / "b.zarr", chunk=256)
    assert main(["export", source, "--format", "ome-zarr", "--image", target, "--name", "ground_truth",
                 "--quiet"]) == 0
    (node,) = _label_nodes(Path(target) / "labels" / "ground_truth")
    assert np.array_equal(np.asarray(node.data[0]), np.asarray(truth.levels[0]))
