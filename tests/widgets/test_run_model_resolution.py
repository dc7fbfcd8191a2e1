"""The Run model widget runs on the image level matching the model's pixel size, places the result over the image,
and shows which level it chose, or a warning when none matches."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.readers import open_image
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import create_model, save_model
from napari_hires.models.files import card_for
from napari_hires.widgets.run_model import MODEL_FILE, RunModelWidget

WAIT_MS = 60_000  # generous: the machine is shared


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> str:
    """A 1024 x 1024 OME-Zarr at 0.5 um/px with levels at 1 and 2 um/px."""
    image, _ = synthetic_slide((1024, 1024))
    scanned = replace(image, scale=(0.5, 0.5, 1.0), units={"y": "micrometer", "x": "micrometer"},
                      nominal_pixel_size=None, levels=image.levels[:1])
    return write_ome_zarr(scanned, tmp_path_factory.mktemp("scan") / "scan.zarr", derive_levels=True, min_size=256)


def _model_file(folder, size: float) -> str:
    torch.manual_seed(0)
    model = create_model("hct_tiny_seg")
    path = folder / f"trained_at_{size}.safetensors"
    save_model(model, path, card_for(model, pixel_size=size, pixel_unit="micrometer"))
    return str(path)


def _run(make_napari_viewer, qtbot, scan, model_file, out):
    viewer = make_napari_viewer()
    (data, meta, _kind), = open_image(scan).layer_data()
    layer = viewer.add_image(data, **meta)
    widget = RunModelWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = layer
    widget.model.value = MODEL_FILE
    widget.model_file.value = model_file
    widget.device.value = "cpu"
    widget.tile.value, widget.overlap.value = 128, 32
    widget.output.value = out
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.result is not None, widget.status.value
    return widget, layer


def test_widget_runs_on_the_matching_level_and_says_so(make_napari_viewer, qtbot, scan, tmp_path):
    widget, layer = _run(make_napari_viewer, qtbot, scan, _model_file(tmp_path, 1.0), tmp_path / "out.zarr")
    note = "model trained at 1.00 um/px; running on level 1 (1.00 um/px) of the image"
    assert widget.resolution.value == note and widget.status.value.endswith(note)
    result, = widget.result_layers
    assert result.data[0].shape == (512, 512)
    assert tuple(result.scale) == (1.0, 1.0) and tuple(layer.scale) == (0.5, 0.5)  # over the image it came from
    assert tuple(result.translate) == (0.25, 0.25)


def test_widget_shows_the_warning_when_no_level_matches(make_napari_viewer, qtbot, scan, tmp_path):
    widget, _layer = _run(make_napari_viewer, qtbot, scan, _model_file(tmp_path, 4.0), tmp_path / "out.zarr")
    assert widget.resolution.value.startswith("warning: model trained at 4.00 um/px, but no level of scan is within "
                                              "25% of it")
    assert widget.result.level == 2
