"""The Export labels widget and the npe2 writers, in a real napari viewer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Reader
from rasterio.features import rasterize

from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.readers import open_image
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.widgets.export import ExportLabelsWidget

NAMES = ["background", "tumour", "stroma"]


def painted() -> np.ndarray:
    """A small painted layer: two classes, one object with a hole."""
    a = np.zeros((300, 400), np.uint8)
    a[20:200, 30:250] = 1
    a[60:100, 80:120] = 0
    a[220:290, 300:390] = 2
    return a


@pytest.fixture
def viewer_with_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((300, 400), np.uint8), name="image")
    viewer.add_labels(painted(), name="corrected", features={"index": [0, 1, 2], "class": NAMES},
                      colormap={0: (0, 0, 0, 0), 1: (1, 0, 0, 1), 2: (0, 1, 0, 1), None: (0, 0, 0, 1)})
    return viewer


def geojson_pixels(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, list[dict]]:
    features = json.loads(path.read_text(encoding="utf-8"))["features"]
    value = {name: i for i, name in enumerate(NAMES)}
    shapes = [(shapely.geometry.shape(f["geometry"]), value[f["properties"]["classification"]["name"]])
              for f in features]
    return rasterize(shapes, out_shape=shape, fill=0, dtype=np.uint8), [f["properties"] for f in features]


def label_data(path: Path) -> np.ndarray:
    (node,) = [n for n in Reader(parse_url(str(path)))() if any(isinstance(s, Label) for s in n.specs)]
    assert {v: p["class"] for v, p in node.metadata["properties"].items()} == dict(enumerate(NAMES))
    return np.asarray(node.data[0])


def export_with(widget: ExportLabelsWidget, qtbot, fmt: str, out: Path) -> None:
    widget.format.value = fmt
    widget.output.value = out
    widget.export_button.native.click()
    qtbot.waitUntil(lambda: widget.export_button.enabled and widget.status.value.startswith("wrote"), timeout=30000)


def test_widget_exports_a_labels_layer_to_each_format(viewer_with_labels, qtbot, tmp_path: Path) -> None:
    widget = ExportLabelsWidget(viewer_with_labels)
    viewer_with_labels.window.add_dock_widget(widget)
    assert widget.layer.choices == ("corrected",)

    export_with(widget, qtbot, "geojson", tmp_path / "corrected.geojson")
    pixels, properties = geojson_pixels(tmp_path / "corrected.geojson", (300, 400))
    assert np.array_equal(pixels, painted())
    assert {"objectType": "annotation", "classification": {"name": "tumour", "color": [255, 0, 0]}} in properties

    export_with(widget, qtbot, "tiff", tmp_path / "corrected.tif")
    with tifffile.TiffFile(tmp_path / "corrected.tif") as tif:
        assert np.array_equal(tif.series[0].levels[0].asarray(), painted())

    export_with(widget, qtbot, "ome-zarr", tmp_path / "corrected.zarr")
    assert np.array_equal(label_data(tmp_path / "corrected.zarr"), painted())
    assert widget.progress.value == widget.progress.max

    widget.export_button.native.click()  # the same output again without overwrite: told, not replaced
    qtbot.waitUntil(lambda: widget.export_button.enabled and "already exists" in widget.status.value, timeout=30000)


def test_widget_follows_the_layer_list_and_asks_for_an_output(viewer_with_labels, qtbot) -> None:
    widget = ExportLabelsWidget(viewer_with_labels)
    widget.export_button.native.click()
    assert widget.status.value == "choose an output path"
    viewer_with_labels.add_labels(np.ones((10, 10), np.uint8), name="second")
    assert widget.layer.choices == ("corrected", "second")
    viewer_with_labels.layers.remove("corrected")
    viewer_with_labels.layers.remove("second")
    assert widget.layer.choices == ()
    widget.export_button.native.click()
    assert widget.status.value == "add or open a Labels layer to export"


def test_cancel_stops_an_export_and_leaves_no_output(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    viewer.add_labels(np.tile(painted(), (8, 8)), name="big")  # 2400 x 3200, 128 objects
    widget = ExportLabelsWidget(viewer)
    widget.format.value = "geojson"
    widget.output.value = tmp_path / "big.geojson"
    widget.export_button.native.click()
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.export_button.enabled, timeout=30000)
    assert widget.status.value == "cancelled; nothing was written"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".geojson", ".tif", ".zarr"])
def test_layer_save_uses_the_npe2_writers(viewer_with_labels, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"saved{suffix}"
    written = viewer_with_labels.layers["corrected"].save(str(out), plugin="napari-hires")
    assert [Path(p) for p in written] == [out]
    if suffix == ".geojson":
        assert np.array_equal(geojson_pixels(out, (300, 400))[0], painted())
    elif suffix == ".tif":
        with tifffile.TiffFile(out) as tif:
            assert np.array_equal(tif.series[0].asarray(), painted())
    else:
        assert np.array_equal(label_data(out), painted())


# ------------------------------------------------------------------------------------------------ multiscale layers


@pytest.fixture(scope="module")
def prediction_store(tmp_path_factory) -> tuple[Path, np.ndarray, dict[int, str]]:
    """A slide with a 4-level label pyramid (1024..128 px) under labels/, 0.5 µm pixels, offset like a region."""
    image, labels = synthetic_slide((1024, 1024), min_size=128)
    image = replace(image, scale=(0.5, 0.5, 1.0), translation=(32.0, 64.0, 0.0))
    labels = replace(labels, name="prediction", scale=(0.5, 0.5), translation=(32.0, 64.0))
    store = write_ome_zarr(image, tmp_path_factory.mktemp("store") / "slide.zarr", labels={"prediction": labels},
                           chunk=256)
    return Path(store), np.asarray(labels.levels[0]), dict(labels.class_names)


@pytest.fixture
def viewer_with_prediction(make_napari_viewer, prediction_store):
    viewer = make_napari_viewer()
    viewer.open(str(prediction_store[0]), plugin="napari-hires")
    layer = viewer.layers["prediction"]
    assert layer.multiscale and len(layer.data) == 4 and layer.data[0].shape == (1024, 1024)
    viewer.layers.selection = {layer}
    return viewer


def check_full_resolution(out: Path, truth: np.ndarray, names: dict[int, str]) -> None:
    """The export at out holds the full-resolution labels (and for rasters their pyramid and pixel size)."""
    if out.suffix == ".geojson":
        features = json.loads(out.read_text(encoding="utf-8"))["features"]
        value = {name: v for v, name in names.items()}
        shapes = [(shapely.geometry.shape(f["geometry"]), value[f["properties"]["classification"]["name"]])
                  for f in features]
        assert np.array_equal(rasterize(shapes, out_shape=truth.shape, fill=0, dtype=np.uint8), truth)
        return
    if out.suffix == ".tif":
        with tifffile.TiffFile(out) as tif:
            levels = tif.series[0].levels
            assert [lv.shape for lv in levels] == [(1024, 1024), (512, 512), (256, 256), (128, 128)]
            assert np.array_equal(levels[0].asarray(), truth)
    pyr = open_image(out)  # a TIFF reads back as an image: only OME-Zarr says it holds labels
    assert [lv.shape for lv in pyr.levels] == [(1024, 1024), (512, 512), (256, 256), (128, 128)]
    assert np.array_equal(np.asarray(pyr.levels[0]), truth)
    assert pyr.scale == pytest.approx((0.5, 0.5))
    if out.suffix == ".zarr":
        assert pyr.kind == "labels" and pyr.class_names == names
        assert pyr.translation == pytest.approx((32.0, 64.0))


@pytest.mark.parametrize("suffix", [".zarr", ".tif", ".geojson"])
def test_save_selected_layers_writes_the_full_resolution_of_a_multiscale_layer(
        viewer_with_prediction, prediction_store, tmp_path: Path, suffix: str) -> None:
    _, truth, names = prediction_store
    out = tmp_path / f"prediction{suffix}"
    written = viewer_with_prediction.layers.save(str(out), selected=True, plugin="napari-hires")
    assert [Path(p) for p in written] == [out]
    check_full_resolution(out, truth, names)


@pytest.mark.parametrize("fmt, suffix", [("ome-zarr", ".zarr"), ("tiff", ".tif"), ("geojson", ".geojson")])
def test_widget_exports_the_full_resolution_of_a_multiscale_layer(
        viewer_with_prediction, prediction_store, qtbot, tmp_path: Path, fmt: str, suffix: str) -> None:
    _, truth, names = prediction_store
    widget = ExportLabelsWidget(viewer_with_prediction)
    widget.layer.value = "prediction"
    export_with(widget, qtbot, fmt, tmp_path / f"prediction{suffix}")
    check_full_resolution(tmp_path / f"prediction{suffix}", truth, names)
