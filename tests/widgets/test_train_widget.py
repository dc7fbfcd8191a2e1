"""The "Fine-tune" widget in a real viewer: it fine-tunes on a region of corrected labels with a live loss curve and
saves a loadable model, Cancel stops and writes nothing, "Predict again" shows the trained model's labels over the
region, and the self-supervised mode trains a denoiser on a noisy image alone."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import load_model
from napari_hires.training import predict_box
from napari_hires.widgets.train import MODES, NEW_DENOISER, REGIONS, TrainWidget

WAIT_MS = 60_000  # generous: the machine is shared
REGION = (512, 704, 640, 832)  # y0, y1, x0, x1 in level-0 pixels
CORNERS = np.array([[512, 640], [703, 640], [703, 831], [512, 831]], float)  # pixel centres of REGION's corners


@pytest.fixture(scope="module")
def slide() -> tuple[np.ndarray, np.ndarray]:
    """Level 0 of the 2048 x 2048 synthetic slide (seed 1) and its labels, in memory."""
    image, labels = synthetic_slide((2048, 2048), seed=1)
    return np.asarray(image.levels[0]), np.asarray(labels.levels[0])


def _widget(viewer, qtbot, tmp_path, *, steps: int, model: str = "hct_tiny_seg") -> TrainWidget:
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    image = viewer.layers[0]
    shapes = viewer.add_shapes([CORNERS], shape_type="rectangle", name="train here", scale=image.scale,
                               translate=image.translate)
    widget.region.value = REGIONS[1]
    widget.shapes.value = shapes
    if model in widget.model.choices:
        widget.model.value = model
    widget.steps.value = steps
    widget.batch.value = 2
    widget.tile.value = 64
    widget.device.value = "cpu"
    widget.output.value = tmp_path / "tuned.safetensors"
    return widget


def _train(widget: TrainWidget, qtbot) -> None:

    widget.train_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_fine_tune_shows_each_step_saves_a_model_and_predicts_again(make_napari_viewer, qtbot, tmp_path, slide):
    image, truth = slide
    viewer = make_napari_viewer()
    img = viewer.add_image(image, rgb=True, name="slide", scale=(0.5, 0.5), translate=(10.0, 20.0))
    viewer.add_labels(truth, name="corrected", scale=(0.5, 0.5), translate=(10.0, 20.0))
    widget = _widget(viewer, qtbot, tmp_path, steps=3)
    assert widget.image.value is img and widget.labels.value.name == "corrected"
    assert widget.chosen_region(img, widget.labels.value) == REGION
    _train(widget, qtbot)
    assert widget.status.value.startswith("trained 3 steps"), widget.status.value
    assert len(widget.curve.points) == 3 and all(np.isfinite(widget.curve.points))
    assert widget.curve.points == widget.job.result.losses
    assert widget.progress.value == 3
    model = load_model(tmp_path / "tuned.safetensors")
    assert model.task == "segmentation"
    assert model.card.provenance["base_model"] == "hct_tiny_seg"
    assert model.card.provenance["settings"]["steps_done"] == 3
    assert model.card.provenance["data"]["labelled_pixels"] == 192 * 192  # the region, every pixel labelled
    assert widget.output.value != tmp_path / "tuned.safetensors"  # the next run gets a new file

    assert widget.predict_button.enabled
    widget.predict_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.worker is None and bool(widget.result_layers), timeout=WAIT_MS)
    (layer,) = widget.result_layers
    assert layer.__class__.__name__ == "Labels" and layer.multiscale
    assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (10.0, 20.0)
    pred = np.asarray(layer.data[0])
    assert pred.shape == truth.shape
    y0, y1, x0, x1 = REGION
    inside = pred[y0:y1, x0:x1]
    outside = pred.copy()
    outside[y0:y1, x0:x1] = 0
    assert np.unique(inside).size >= 1 and not outside.any()  # written over the region only
    expected = predict_box(widget.job.model, image, REGION, device="cpu")
    assert np.array_equal(inside, expected)


def test_cancel_stops_between_steps_and_writes_no_file(make_napari_viewer, qtbot, tmp_path, slide):
    image, truth = slide
    viewer = make_napari_viewer()
    viewer.add_image(image, rgb=True, name="slide")
    viewer.add_labels(truth, name="corrected")
    widget = _widget(viewer, qtbot, tmp_path, steps=500)
    widget.train_button.clicked.emit()
    qtbot.waitUntil(lambda: len(widget.curve.points) >= 2, timeout=WAIT_MS)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert 2 <= len(widget.curve.points) < 500
    assert widget.status.value.startswith("cancelled after"), widget.status.value
    assert widget.job is None and not widget.predict_button.enabled
    assert not list(tmp_path.iterdir())


def test_scribbles_in_an_editing_window_train_with_zero_unlabelled(make_napari_viewer, qtbot, tmp_path, slide):
    image, truth = slide
    viewer = make_napari_viewer()
    img = viewer.add_image(image, rgb=True, name="slide")
    window = np.zeros((256, 256), np.uint8)
    window[100:110, :] = truth[900 + 100:900 + 110, 1000:1256] + 1  # a stroke of class v painted as v+1
    window[200:205, :50] = 4  # and one of class 3
    viewer.add_labels(window, name="slide (editing 900:1156, 1000:1256)", translate=(900, 1000))
    widget = _widget(viewer, qtbot, tmp_path, steps=2)
    widget.labels.value = viewer.layers[-2]
    widget.region.value = REGIONS[2]
    widget.zero_unlabelled.value = True
    assert widget.chosen_region(img, widget.labels.value) == (900, 1156, 1000, 1256)
    _train(widget, qtbot)
    assert widget.status.value.startswith("trained 2 steps"), widget.status.value
    card = load_model(tmp_path / "tuned.safetensors").card
    assert card.provenance["data"]["labelled_pixels"] == 10 * 256 + 5 * 50
    assert card.provenance["data"]["zero_is_unlabelled"] is True

    widget.zero_unlabelled.value = False  # now 0 is class 0, and v+1 = 4 is not a class of the model
    widget.output.value = tmp_path / "again.safetensors"
    _train(widget, qtbot)
    assert widget.status.value.startswith("error:") and "value 4" in widget.status.value, widget.status.value
    assert not (tmp_path / "again.safetensors").exists()


def test_bad_form_says_what_to_fix(make_napari_viewer, qtbot, tmp_path, slide):
    image, truth = slide
    viewer = make_napari_viewer()
    viewer.add_image(image, rgb=True, name="slide")
    widget = _widget(viewer, qtbot, tmp_path, steps=2)
    widget.train_button.clicked.emit()
    assert widget.worker is None and "no labels layer" in widget.status.value
    viewer.add_labels(truth[:512, :512], name="elsewhere", translate=(1500, 1500))
    widget.labels.value = viewer.layers["elsewhere"]
    widget.train_button.clicked.emit()
    assert widget.worker is None and "holds none of the labels" in widget.status.value


def test_self_supervised_mode_trains_a_denoiser_without_labels(make_napari_viewer, qtbot, tmp_path):
    noisy, _ = synthetic_slide((2048, 2048), seed=2, variant="noisy")
    viewer = make_napari_viewer()
    viewer.add_image(np.asarray(noisy.levels[0]), rgb=True, name="noisy")
    widget = _widget(viewer, qtbot, tmp_path, steps=3)
    widget.mode.value = MODES[1]
    assert not widget.labels.visible and widget.model.value == NEW_DENOISER
    widget.output.value = tmp_path / "denoiser.safetensors"
    _train(widget, qtbot)
    assert widget.status.value.startswith("trained 3 steps"), widget.status.value
    assert len(widget.curve.points) == 3
    model = load_model(tmp_path / "denoiser.safetensors")
    assert model.task == "restoration"
    assert "blind spot" in model.card.provenance["objective"]


def test_scribbles_with_no_convention_chosen_are_refused_in_the_status(make_napari_viewer, qtbot, tmp_path, slide):
    image, _ = slide
    viewer = make_napari_viewer()
    viewer.add_image(image, rgb=True, name="slide")
    painted = np.zeros(image.shape[:2], np.uint8)  # a new user's strokes of labels 1..3 on an empty layer
    painted[560:566, 640:830], painted[650:656, 640:800], painted[600:700, 700:704] = 1, 2, 3
    viewer.add_labels(painted, name="painted")
    widget = _widget(viewer, qtbot, tmp_path, steps=2)
    _train(widget, qtbot)
    assert widget.status.value.startswith("error:") and "0 means unlabelled" in widget.status.value, \
        widget.status.value
    assert not list(tmp_path.iterdir())
    widget.zero_unlabelled.value = True
    _train(widget, qtbot)
    assert widget.status.value.startswith("trained 2 steps") and "0 is unlabelled" in widget.status.value, \
        widget.status.value


def test_an_untrained_architecture_can_start_from_an_encoder_file(make_napari_viewer, qtbot, tmp_path, slide):
    from napari_hires.models import create_model, save_model

    encoder = save_model(create_model("maxvit_nano_seg.synthetic"), tmp_path / "encoder.safetensors")
    image, truth = slide
    viewer = make_napari_viewer()
    viewer.add_image(image, rgb=True, name="slide", scale=(0.5, 0.5), translate=(10.0, 20.0))
    viewer.add_labels(truth, name="corrected", scale=(0.5, 0.5), translate=(10.0, 20.0))
    widget = _widget(viewer, qtbot, tmp_path, steps=2, model="hct_tiny_seg.synthetic")
    assert widget.encoder.native.isHidden()  # trained weights take no encoder (the viewer is not shown)
    widget.model.value = "maxvit_nano_seg"
    assert not widget.encoder.native.isHidden()
    widget.encoder.value = encoder
    widget.tile.value = 128
    _train(widget, qtbot)
    assert widget.status.value.startswith("trained 2 steps"), widget.status.value
    assert f"the encoder from {encoder}" in widget.status.value
    card = load_model(tmp_path / "tuned.safetensors").card
    assert card.provenance["encoder"]["from"] == str(encoder) and card.overrides["window_size"] == 4
