"""The Fine-tune widget shows the held-out score of a real stained tile corrected on its left half: before training,
during it and at the end, and says when training did not help."""

from __future__ import annotations

import pytest

from ihc_tile import ihc_tile
from napari_hires.widgets.train import REGIONS, TrainWidget

WAIT_MS = 60_000  # generous: the machine is shared


@pytest.fixture
def widget(make_napari_viewer, tmp_path):
    image, _, corrections = ihc_tile()
    viewer = make_napari_viewer()
    viewer.add_image(image, rgb=True, name="ihc")
    viewer.add_labels(corrections, name="corrected")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.region.value = REGIONS[2]  # the labels' extent: the whole tile
    widget.model.value = "hct_tiny_seg.synthetic"
    widget.steps.value, widget.batch.value, widget.tile.value = 3, 2, 128
    widget.device.value = "cpu"
    widget.output.value = tmp_path / "tuned.safetensors"
    return widget


def _finished(widget: TrainWidget, qtbot) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_the_status_shows_the_held_out_score_before_during_and_at_the_end(widget, qtbot):
    widget.steps.value = 26  # evaluated before training, at step 25 (every 25 steps) and at the end
    widget.train_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.status.value.startswith("step ") and "held-out Dice" in widget.status.value
                    and widget.status.value.endswith("before training"), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget.status.value.startswith("step 25/26")
                    and "held-out Dice" in widget.status.value and "at step 25 (before" in widget.status.value,
                    timeout=WAIT_MS)
    _finished(widget, qtbot)
    final = widget.status.value
    assert final.startswith("trained 26 steps") and "; held out " in final, final
    assert "before training, best" in final or "training did not improve the held-out score" in final, final


def test_the_status_says_when_training_did_not_help(widget, qtbot):
    widget.lr.value = 1.0  # absurd: the model only gets worse
    widget.train_button.clicked.emit()
    _finished(widget, qtbot)
    assert "training did not improve the held-out score (Dice" in widget.status.value, widget.status.value
    assert "the model was kept as it was" in widget.status.value
