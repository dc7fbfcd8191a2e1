"""The widgets as a first-time user meets them: estimates that time the model warm, a rate while running, a
question before writing over a finished output, whole status lines, docks that scroll, a pyramid builder that
offers the open image, and a model list that says which models are trained and on what."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from napari_hires.widgets.run_model import RunModelWidget

WAIT_MS = 60_000  # generous: the machine is shared
MODEL = "hct_tiny_seg"


def small_widget(viewer, *, tile: int = 128) -> RunModelWidget:
    """A Run model form over a small RGB image with the small untrained HCT segmenter, on the CPU."""
    widget = RunModelWidget(viewer)
    viewer.window.add_dock_widget(widget)
    pixels = np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)
    widget.image.value = viewer.add_image(pixels, rgb=True, name="small")
    widget.model.value = MODEL
    widget.device.value = "cpu"
    widget.tile.value, widget.overlap.value = tile, 32
    return widget


def settle(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.estimate_worker is None and not widget._estimate_timer.isActive(), timeout=WAIT_MS)


def estimate_seconds(text: str) -> float:
    found = re.search(r"~([\d.]+) (s|min)", text)
    assert found, text
    return float(found.group(1)) * (60 if found.group(2) == "min" else 1)


def test_estimate_times_the_model_warm_not_its_slow_first_call(make_napari_viewer, qtbot, tmp_path):
    """A model whose first call pays a one-off cost of 3 s (as a first CUDA call or a cold CPU does) is estimated
    from a warm call: the estimate is not the cold call times the tiles."""
    viewer = make_napari_viewer()
    widget = small_widget(viewer, tile=160)  # a tile no other test times: nothing cached
    net = widget.load_model(MODEL, "")
    calls = []

    def cold_first_call(*_: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            time.sleep(3.0)

    hook = net.register_forward_pre_hook(cold_first_call)
    try:
        widget._schedule_estimate()
        qtbot.waitUntil(lambda: "tiles ·" in widget.estimate.value, timeout=WAIT_MS)
        settle(qtbot, widget)
    finally:
        hook.remove()
    assert calls, "the estimate did not time the model"
    assert estimate_seconds(widget.estimate.value) < 1.0, widget.estimate.value  # warm: ~0.1 s


def test_status_shows_the_live_rate_once_blocks_land(make_napari_viewer, qtbot, tmp_path):
    """While a run of two blocks goes, the status gives the rate measured so far (Mpx/s) and the time left."""
    viewer = make_napari_viewer()
    widget = small_widget(viewer)
    widget.image.value = viewer.add_image(np.random.default_rng(1).integers(0, 255, (130, 2048, 3), np.uint8),
                                          rgb=True, name="two blocks")
    widget.output.value = tmp_path / "rate.zarr"
    widget.batch.value = 4
    settle(qtbot, widget)
    # A tenth of a second per batch, so that blocks land over a few timer ticks on any machine.
    hook = widget.load_model(MODEL, "").register_forward_pre_hook(lambda *_: time.sleep(0.1))
    seen: list[str] = []

    def live_or_over() -> bool:
        seen.append(widget.status.value)
        return bool(re.match(r"1/2 blocks · [\d.]+ Mpx/s · ~[\d.]+ (s|min)", seen[-1])) or widget.worker is None

    try:
        widget.run_button.native.click()
        qtbot.waitUntil(live_or_over, timeout=WAIT_MS)
        assert re.match(r"1/2 blocks · [\d.]+ Mpx/s · ~[\d.]+ (s|min) left", seen[-1]), sorted(set(seen))
        qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    finally:
        hook.remove()
    assert widget.result is not None and widget.result.blocks_total == 2, widget.status.value
    settle(qtbot, widget)


def run_and_wait(qtbot, widget) -> None:
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def finished_run(make_napari_viewer, qtbot, tmp_path) -> tuple[object, RunModelWidget]:
    """A viewer and a Run model form whose output already holds a finished prediction."""
    viewer = make_napari_viewer(show=True)
    widget = small_widget(viewer)
    widget.output.value = tmp_path / "small.zarr"
    settle(qtbot, widget)
    run_and_wait(qtbot, widget)
    assert widget.status.value.startswith("done"), widget.status.value
    return viewer, widget


def result_layers(viewer) -> list:
    return [ly for ly in viewer.layers if ly.metadata.get("source")]


def test_running_again_on_a_finished_output_asks_first(make_napari_viewer, qtbot, tmp_path):
    """Run on an output that holds a finished prediction writes nothing new: it asks to reuse, overwrite or write a
    new store (no silent "-2" store)."""
    viewer, widget = finished_run(make_napari_viewer, qtbot, tmp_path)
    out = str(widget.output.value)
    folder = sorted(p.name for p in widget.output.value.parent.iterdir())
    widget.run_button.native.click()
    assert widget.worker is None and str(widget.output.value) == out
    assert widget.finished.visible and "finished" in widget.status.value
    assert sorted(p.name for p in widget.output.value.parent.iterdir()) == folder
    settle(qtbot, widget)


@pytest.mark.parametrize("answer", ["reuse", "overwrite", "new"])
def test_each_answer_ends_with_one_layer_per_store(make_napari_viewer, qtbot, tmp_path, answer):
    """Reuse shows the finished store, overwrite writes it again, new writes the next free name; each leaves one
    layer per store, the earlier run's layer replaced rather than stacked."""
    viewer, widget = finished_run(make_napari_viewer, qtbot, tmp_path)
    out = str(widget.output.value)
    widget.run_button.native.click()
    getattr(widget, f"{answer}_button").native.click()
    qtbot.waitUntil(lambda: widget.worker is None and not widget.finished.visible, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: widget.status.value.startswith("done"), timeout=WAIT_MS)
    sources = [ly.metadata["source"] for ly in result_layers(viewer)]
    assert sorted(set(sources)) == sorted(sources), sources  # no store shown twice
    if answer == "new":
        assert str(widget.output.value) != out and sources == [out, str(widget.output.value)]
        assert widget.result.blocks_done == widget.result.blocks_total
    else:
        assert str(widget.output.value) == out and sources == [out]
        assert widget.result.blocks_done == (widget.result.blocks_total if answer == "overwrite" else 0)
    settle(qtbot, widget)


LONG = ("resumable: 3 of 12 blocks done (Run resumes with the same settings) · tile 512, overlap 64, batch 2 · "
        "segmentation, 0.41M params · a long line that must wrap onto further lines, never be cut to half a line")


def shows_whole_lines(label) -> bool:
    """The label wraps and is as tall as its text needs at its width (more than one line for LONG)."""
    native = label.native
    line = native.fontMetrics().lineSpacing()
    need = native.heightForWidth(native.width())
    return native.wordWrap() and native.isVisible() and need > 1.5 * line and native.height() >= need


@pytest.mark.parametrize("widget_name, labels", [
    ("run_model", ("auto", "estimate", "resume", "status")),
    ("preview", ("status",)),
    ("train", ("status",)),
])
def test_status_lines_wrap_to_whole_lines(make_napari_viewer, qtbot, widget_name, labels):
    """Long "auto", "resume" and status messages wrap onto as many whole lines as they need in a docked widget."""
    from napari_hires.widgets.preview import RestorationPreviewWidget
    from napari_hires.widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="grey")
    widget = {"run_model": RunModelWidget, "preview": RestorationPreviewWidget, "train": TrainWidget}[widget_name](
        viewer)
    dock = viewer.window.add_dock_widget(widget, area="right")
    qtbot.waitUntil(widget.isVisible, timeout=10_000)
    for name in labels:
        getattr(widget, name).value = LONG  # after the dock was laid out, as messages come
    dock.setFixedWidth(320)  # a narrow dock: the most lines
    for name in labels:
        qtbot.waitUntil(lambda name=name: shows_whole_lines(getattr(widget, name)), timeout=10_000)
    if widget_name == "run_model":
        settle(qtbot, widget)


def test_four_docked_widgets_fit_a_1000_px_screen(make_napari_viewer, qtbot):
    """Run model, Fine-tune, Restoration preview and Build pyramid docked together need less than a 1000-px
    screen's height: each form scrolls inside its dock instead of growing the window."""
    from napari_hires.widgets.preview import RestorationPreviewWidget
    from napari_hires.widgets.pyramid import PyramidBuilderWidget
    from napari_hires.widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    widgets = [RunModelWidget(viewer), TrainWidget(viewer), RestorationPreviewWidget(viewer),
               PyramidBuilderWidget(viewer)]
    docks = [viewer.window.add_dock_widget(w, area="right") for w in widgets]
    qtbot.waitUntil(lambda: all(w.isVisible() for w in widgets), timeout=10_000)
    needed = sum(dock.minimumSizeHint().height() for dock in docks)
    assert needed < 1000 - 100, f"the four docks need {needed} px"  # the menu bar, title and status bars
    settle(qtbot, widgets[0])


def open_tiff(viewer, path, shape) -> object:
    """A grey TIFF of ``shape`` on disk, opened in the viewer as a user would (File > Open)."""
    import tifffile

    tifffile.imwrite(path, (np.arange(shape[0] * shape[1]) % 251).astype(np.uint8).reshape(shape))
    (layer,) = viewer.open(str(path), plugin="napari-hires")
    return layer


def test_build_pyramid_offers_the_open_image_and_opens_its_result(make_napari_viewer, qtbot, tmp_path):
    """With an image open from a file, Build pyramid proposes that file and a .zarr beside it, and opens what it
    built."""
    from napari_hires.widgets.pyramid import PyramidBuilderWidget

    viewer = make_napari_viewer()
    open_tiff(viewer, tmp_path / "scan.tif", (600, 700))
    widget = PyramidBuilderWidget(viewer)
    assert str(widget.source.value) == str(tmp_path / "scan.tif")
    assert str(widget.output.value) == str(tmp_path / "scan.zarr")
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith("wrote"), widget.status.value
    opened = [ly for ly in viewer.layers if ly.metadata.get("source") == str(tmp_path / "scan.zarr")]
    assert len(opened) == 1 and opened[0].multiscale


def test_build_pyramid_shows_the_time_left(make_napari_viewer, qtbot, tmp_path):
    """While it builds, the status says how far it is and about how long is left."""
    from napari_hires.widgets.pyramid import PyramidBuilderWidget

    viewer = make_napari_viewer()
    open_tiff(viewer, tmp_path / "big.tif", (8192, 4096))
    widget = PyramidBuilderWidget(viewer)
    widget.chunk.value = 256
    seen: list[str] = []

    def left_or_over() -> bool:
        seen.append(widget.status.value)
        return " left" in seen[-1] or widget.worker is None

    widget.run_button.native.click()
    qtbot.waitUntil(left_or_over, timeout=WAIT_MS)
    assert re.search(r"\d+/\d+ · ~[\d.]+ (s|min)( \d+ s)? left", seen[-1]), sorted(set(seen))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_fine_tuning_on_the_visible_region_trains_only_where_the_model_predicted(make_napari_viewer, qtbot,
                                                                                  tmp_path):
    """A prediction over a rectangle, fine-tuned on the visible region (the whole image in view): the pixels the
    model never predicted (0 in the store, not "background") are not trained on; only the predicted rectangle is."""
    from napari_hires.engine import predict
    from napari_hires.models import load_model
    from napari_hires.widgets.train import REGIONS, TrainWidget

    pixels = np.random.default_rng(0).integers(0, 255, (600, 600, 3), np.uint8)
    predicted = (100, 300, 200, 400)
    out = tmp_path / "prediction.zarr"
    predict(pixels, MODEL, out, region=predicted, tile=128, overlap=32, device="cpu")
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(pixels, rgb=True, name="image")
    viewer.open(str(out), plugin="napari-hires")
    viewer.reset_view()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.labels.value.metadata.get("source") == str(out)
    widget.region.value = REGIONS[0]
    widget.model.value = MODEL
    widget.zero_unlabelled.value = False  # the prediction's 0 is its background class where it predicted
    widget.steps.value, widget.batch.value, widget.tile.value = 1, 2, 64
    widget.device.value = "cpu"
    widget.output.value = tmp_path / "tuned.safetensors"
    assert _layers_visible(viewer, image) == (0, 600, 0, 600)
    assert widget.chosen_region(image, widget.labels.value) == predicted
    widget.train_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith("trained 1 steps"), widget.status.value
    card = load_model(tmp_path / "tuned.safetensors").card
    assert card.provenance["data"]["labelled_pixels"] == 200 * 200


def _layers_visible(viewer, layer):
    from napari_hires.widgets import _layers

    return _layers.visible_region(viewer, layer)


@pytest.mark.parametrize("widget_name", ["run_model", "train", "preview"])
def test_model_list_shows_trained_models_first_with_their_data(make_napari_viewer, widget_name):
    """Trained models come first and say what they were trained on; untrained architectures are marked."""
    from napari_hires.models import model_entry
    from napari_hires.widgets.preview import RestorationPreviewWidget
    from napari_hires.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    widget = {"run_model": RunModelWidget, "preview": RestorationPreviewWidget, "train": TrainWidget}[widget_name](
        viewer)
    combo = widget.model.native
    rows = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]
    names = [data for _, data in rows if data not in ("model file...", "new small MAXIM")]
    trained = [model_entry(name).trained for name in names]
    assert any(trained) and not all(trained)
    assert trained == sorted(trained, reverse=True), names  # every trained model before every untrained one
    for text, data in rows:
        if data in names and model_entry(data).trained:
            assert "trained on the synthetic slide" in text, text
        elif data in names:
            assert "untrained" in text, text


@pytest.mark.parametrize("synthetic", [False, True])
def test_a_synthetic_trained_model_on_a_real_image_says_so(make_napari_viewer, qtbot, tmp_path, synthetic):
    """The shipped demo weights learnt the synthetic slide only: run on another image, the status says in one line
    that the labels are a demo; on the synthetic slide itself it says nothing of the kind."""
    from napari_hires._sample_data import slide_layer_data

    viewer = make_napari_viewer()
    widget = small_widget(viewer)
    if synthetic:
        (data, meta, _), _labels = slide_layer_data((512, 512))
        widget.image.value = viewer.add_image(data, **meta)
    widget.model.value = "hct_tiny_seg.synthetic"
    widget.output.value = tmp_path / "demo.zarr"
    settle(qtbot, widget)
    run_and_wait(qtbot, widget)
    qtbot.waitUntil(lambda: widget.status.value.startswith("done"), timeout=WAIT_MS)
    assert ("trained on the synthetic slide only" in widget.status.value) is not synthetic, widget.status.value
    settle(qtbot, widget)
