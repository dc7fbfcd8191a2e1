"""The parts every dock widget shares (widgets/_base.py): one device list of the devices that exist, and layer
choices that follow the viewer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_hires.widgets._base import available_devices
from napari_hires.widgets.correct import CorrectLabelsWidget
from napari_hires.widgets.export import ExportLabelsWidget
from napari_hires.widgets.preview import RestorationPreviewWidget
from napari_hires.widgets.run_model import RunModelWidget
from napari_hires.widgets.train import TrainWidget


def test_the_device_list_holds_the_devices_that_exist():
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    assert available_devices() == ["auto", "cpu", *(["cuda"] if torch.cuda.is_available() else []),
                                   *(["mps"] if mps else [])]


@pytest.mark.parametrize("cls", [RunModelWidget, TrainWidget, RestorationPreviewWidget])
def test_every_widget_offers_that_device_list(make_napari_viewer, cls):
    widget = cls(make_napari_viewer())
    assert list(widget.device.choices) == available_devices() and widget.device.value == "auto"


@pytest.mark.parametrize("cls, attribute, kind", [
    (RunModelWidget, "image", "image"), (TrainWidget, "image", "image"), (TrainWidget, "labels", "labels"),
    (RestorationPreviewWidget, "image", "image"), (ExportLabelsWidget, "layer", "labels"),
])
def test_layer_choices_follow_the_viewer(make_napari_viewer, cls, attribute, kind):
    """A layer added after the widget is offered (and chosen when none was), a removed one is no longer offered."""
    viewer = make_napari_viewer()
    widget = cls(viewer)
    combo = getattr(widget, attribute)
    assert [c for c in combo.choices if c is not None] == []
    layer = getattr(viewer, f"add_{kind}")(np.zeros((32, 32), np.uint8), name="late")
    offered = [c for c in combo.choices if c is not None]
    assert offered in ([layer], ["late"]) and combo.value in (layer, "late")
    viewer.layers.remove(layer)
    assert [c for c in combo.choices if c is not None] == []
    if isinstance(widget, RunModelWidget):
        widget._estimate_timer.stop()


def test_correct_labels_offers_only_labels_read_from_a_store(make_napari_viewer, tmp_path):
    from napari_hires.io.ome_zarr_writer import write_ome_zarr
    from napari_hires.io.synthetic import synthetic_slide

    _, labels = synthetic_slide((256, 256))
    viewer = make_napari_viewer()
    widget = CorrectLabelsWidget(viewer)
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="painted")
    assert widget.layer_box.choices == ()
    (layer,) = viewer.open(str(write_ome_zarr(labels, tmp_path / "labels.zarr")), plugin="napari-hires")
    assert widget.layer_box.choices == (layer,)
