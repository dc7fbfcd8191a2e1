"""The "Run model" widget in a real viewer: a model over a Shapes rectangle of the synthetic slide gives the same
labels as the engine called directly, the result layers appear at once and fill in, Cancel then Run resumes to the
same result, the main thread never stalls long while it runs, and the form shows its estimate."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from napari.layers import Labels
from qtpy.QtCore import QTimer

from napari_hires.engine import BlockWritten, predict
from napari_hires.engine.estimate import run_geometry
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import create_model, registry, save_model
from napari_hires.models.files import card_for
from napari_hires.widgets import _layers
from napari_hires.widgets.run_model import MODEL_FILE, SCOPES, RunModelWidget
from tiny_restorer import TinyRestorer

WAIT_MS = 60_000  # generous: the machine is shared
SCALE, TRANSLATE = (0.5, 0.5), (10.0, 20.0)
# A rectangle with corners on the pixel centres (900, 880) and (1160, 1150): pixels 900..1160 by 880..1150,
# across four output blocks of 1024 px.
CORNERS = (900, 880), (1160, 1150)
REGION = (900, 1161, 880, 1151)
SETTINGS = dict(tile=128, overlap=32, batch=4)
CLASSES = {0: "background", 1: "stroma", 2: "epithelium", 3: "nuclei"}
COLORS = {0: [0.0, 0.0, 0.0, 0.0], 1: [0.9, 0.5, 0.6, 1.0], 2: [0.4, 0.1, 0.6, 1.0], 3: [0.1, 0.1, 0.5, 1.0]}


@pytest.fixture(scope="module")
def slide() -> list[np.ndarray]:
    """The 2048 x 2048 synthetic slide's levels, rendered once into memory."""
    image, _ = synthetic_slide((2048, 2048))
    return [np.asarray(level) for level in image.levels]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """A small HCT segmentation model saved as a model file whose card names the classes and their colours."""
    torch.manual_seed(0)
    model = create_model("hct_tiny_seg")
    path = tmp_path_factory.mktemp("model") / "tiny_seg.safetensors"
    save_model(model, path, card_for(model, class_names=CLASSES, class_colors=COLORS))
    return str(path)


@pytest.fixture(scope="module")
def direct(slide, model_file, tmp_path_factory) -> np.ndarray:
    """Level 0 of the engine's own prediction over the same region with the same settings."""
    out = tmp_path_factory.mktemp("direct") / "direct.zarr"
    predict(slide[0], model_file, out, region=REGION, device="cpu", **SETTINGS)
    return zarr.open_group(str(out), mode="r")["0"][...]


def setup_widget(viewer, slide, model_file, out) -> tuple[RunModelWidget, object]:
    """The slide as a multiscale image layer (with a scale and offset), a rectangle over it, and the form filled in
    as a user would fill it."""
    image = viewer.add_image(slide, multiscale=True, rgb=True, name="slide", scale=SCALE, translate=TRANSLATE)
    world = [[t + c * s for c, s, t in zip(corner, SCALE, TRANSLATE)] for corner in CORNERS]
    (y0, x0), (y1, x1) = world
    shapes = viewer.add_shapes([[[y0, x0], [y0, x1], [y1, x1], [y1, x0]]], shape_type="rectangle", name="roi")
    widget = RunModelWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = image
    widget.model.value = MODEL_FILE
    widget.model_file.value = model_file
    widget.scope.value = SCOPES[2]
    widget.shapes.value = shapes
    widget.device.value = "cpu"
    widget.tile.value, widget.overlap.value = SETTINGS["tile"], SETTINGS["overlap"]
    widget.batch.value = SETTINGS["batch"]
    widget.output.value = out
    return widget, image


def wait_for_run(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.result is not None, widget.status.value


def settle(qtbot, widget) -> None:
    """Wait for the form's estimate (it measures the model off the UI thread) so that no worker outlives the test."""
    qtbot.waitUntil(lambda: widget.estimate_worker is None and not widget._estimate_timer.isActive(), timeout=WAIT_MS)


def labels_layer(viewer, out):
    (layer,) = [lay for lay in viewer.layers if lay.metadata.get("source") == str(out)]
    return layer


class StallMeter:
    """A 10 ms QTimer on the main thread: the gaps between its ticks are the main thread's stalls.

    Gaps in which napari creates a layer (adds it, and draws the frame that first shows it: its visuals, controls
    and shaders) are napari's own one-off cost of a new layer and are kept apart from the run's stalls.
    """

    def __init__(self, viewer) -> None:
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.last = 0.0
        self.gaps: list[tuple[float, float]] = []
        self.creating: list[float] = []  # when a layer was inserted, and when the next frame was drawn
        self._inserted = False
        viewer.layers.events.inserted.connect(self._on_insert)
        viewer.window._qt_viewer.canvas._scene_canvas.events.draw.connect(self._on_draw)

    def _on_insert(self, _event) -> None:
        self.creating.append(time.perf_counter())
        self._inserted = True

    def _on_draw(self, _event) -> None:
        if self._inserted:
            self.creating.append(time.perf_counter())
            self._inserted = False

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((self.last, now))
        self.last = now

    def start(self) -> None:
        self.last = time.perf_counter()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self._tick()

    def longest(self, creating_layers: bool = False) -> float:
        """The longest gap in which napari created a layer, or the longest other gap."""
        def creates(gap: tuple[float, float]) -> bool:
            return any(gap[0] <= t <= gap[1] for t in self.creating)

        return max((b - a for a, b in self.gaps if creates((a, b)) == creating_layers), default=0.0)


def run_rectangle(qtbot, widget, on_event=None) -> object:
    """Once the form's estimate is in (as a user would see it), click Run (``on_event`` sees every event the run
    yields) and wait for its result."""
    settle(qtbot, widget)
    widget.run_button.native.click()
    if on_event is not None:
        widget.worker.yielded.connect(on_event)
    wait_for_run(qtbot, widget)
    return widget.result


def test_estimate_shows_the_engines_blocks_tiles_time_and_memory(make_napari_viewer, qtbot, slide, model_file,
                                                                 tmp_path):
    """The estimate: the blocks and tiles the engine lays out, a time and a memory figure; and the automatic values."""
    viewer = make_napari_viewer(show=True)
    widget, _ = setup_widget(viewer, slide, model_file, tmp_path / "run.zarr")
    qtbot.waitUntil(lambda: re.search(r"\d+ blocks, \d+ tiles · ~[\d.]+ (s|min)", widget.estimate.value) is not None,
                    timeout=WAIT_MS)
    torch.manual_seed(0)
    geometry = run_geometry((2048, 2048), create_model("hct_tiny_seg"), region=REGION,
                            tile=SETTINGS["tile"], overlap=SETTINGS["overlap"])
    assert widget.estimate.value.startswith(f"{geometry.blocks} blocks, {geometry.tiles} tiles")
    assert re.search(r"[\d.]+ (KiB|MiB|GiB) RAM", widget.estimate.value)
    qtbot.waitUntil(lambda: widget.auto.value != "", timeout=WAIT_MS)
    assert "overlap" in widget.auto.value and "batch 2" in widget.auto.value  # the automatic values, shown
    settle(qtbot, widget)


def test_run_on_rectangle_writes_every_block_and_says_done(make_napari_viewer, qtbot, slide, model_file, tmp_path):
    """Every block of the rectangle is written; the status ends on "done" and the progress bar full."""
    viewer = make_napari_viewer(show=True)
    widget, _ = setup_widget(viewer, slide, model_file, tmp_path / "run.zarr")
    geometry = run_geometry((2048, 2048), widget.load_model(MODEL_FILE, model_file), region=REGION,
                            tile=SETTINGS["tile"], overlap=SETTINGS["overlap"])
    result = run_rectangle(qtbot, widget)
    assert not result.cancelled and result.blocks_done == result.blocks_total == geometry.blocks == 4
    qtbot.waitUntil(lambda: widget.status.value.startswith("done"), timeout=WAIT_MS)
    assert widget.status.value.startswith("done")
    qtbot.waitUntil(lambda: widget.progress.value == widget.progress.max == 4, timeout=WAIT_MS)
    assert widget.progress.value == widget.progress.max == 4
    settle(qtbot, widget)


def test_result_layer_is_there_from_the_first_block(make_napari_viewer, qtbot, slide, model_file, tmp_path):
    """The result layer is in the viewer when the first block lands, and stays for every block."""
    viewer = make_napari_viewer(show=True)
    widget, _ = setup_widget(viewer, slide, model_file, tmp_path / "run.zarr")
    seen: list[int] = []  # result layers in the viewer at each block event

    def on_event(event: object) -> None:
        if isinstance(event, BlockWritten):
            seen.append(sum(lay in viewer.layers for lay in widget.result_layers))

    run_rectangle(qtbot, widget, on_event)
    qtbot.waitUntil(lambda: len(seen) == 4, timeout=WAIT_MS)
    assert seen == [1, 1, 1, 1]  # the result layer was there from the first block on
    settle(qtbot, widget)


def test_main_thread_never_stalls_long_during_a_run(make_napari_viewer, qtbot, slide, model_file, tmp_path):
    """Apart from napari creating the result layer, the main thread never stalls for 0.2 s while blocks land."""
    viewer = make_napari_viewer(show=True)
    widget, _ = setup_widget(viewer, slide, model_file, tmp_path / "run.zarr")
    settle(qtbot, widget)
    meter = StallMeter(viewer)
    meter.start()
    result = run_rectangle(qtbot, widget)
    meter.stop()
    stall, creating = meter.longest(), meter.longest(creating_layers=True)
    print(f"longest main-thread stall during the run: {stall * 1000:.0f} ms "
          f"(napari creating the result layer: {creating * 1000:.0f} ms; run {result.seconds:.1f} s)")
    assert stall < 0.2, f"the main thread stalled for {stall * 1000:.0f} ms"
    settle(qtbot, widget)


def test_run_on_rectangle_matches_engine(make_napari_viewer, qtbot, slide, model_file, direct, tmp_path):
    """The result layer is a multiscale Labels layer placed like the image, with the engine's own labels inside the
    rectangle, nothing outside it, and coarser levels that follow level 0."""
    viewer = make_napari_viewer(show=True)
    out = tmp_path / "run.zarr"
    widget, image = setup_widget(viewer, slide, model_file, out)
    run_rectangle(qtbot, widget)
    qtbot.waitUntil(lambda: widget.status.value.startswith("done"), timeout=WAIT_MS)  # coarser levels written
    layer = labels_layer(viewer, out)
    assert layer.multiscale and isinstance(layer, Labels)
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    got = np.asarray(layer.data[0])
    np.testing.assert_array_equal(got, direct)
    y0, y1, x0, x1 = REGION
    assert got[y0:y1, x0:x1].any() and not got[:y0].any() and not got[:, x1:].any()
    # Coarser levels follow level 0.
    assert np.asarray(layer.data[1]).any()
    settle(qtbot, widget)


def test_result_layer_has_the_model_cards_classes_and_colours(make_napari_viewer, qtbot, slide, model_file,
                                                               tmp_path):
    """The Labels layer takes the class names and colours of the model file's card."""
    viewer = make_napari_viewer(show=True)
    out = tmp_path / "run.zarr"
    widget, _ = setup_widget(viewer, slide, model_file, out)
    settle(qtbot, widget)
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: any(lay.metadata.get("source") == str(out) for lay in viewer.layers), timeout=WAIT_MS)
    layer = labels_layer(viewer, out)
    np.testing.assert_allclose(layer.colormap.map(np.array([1]))[0], COLORS[1])
    assert list(layer.features["class"]) == list(CLASSES.values())
    wait_for_run(qtbot, widget)
    settle(qtbot, widget)


def test_cancel_then_run_again_resumes(make_napari_viewer, qtbot, slide, model_file, direct, tmp_path):
    viewer = make_napari_viewer(show=True)
    out = tmp_path / "resume.zarr"
    widget, _ = setup_widget(viewer, slide, model_file, out)

    settle(qtbot, widget)  # the estimate has timed the model: from here on only the run calls it
    # The user cancels on seeing the first block land. So that the run cannot finish first on a fast machine, the
    # model's second call (the second block: each block is one batch here) waits until that click has happened.
    clicked = threading.Event()
    calls = []
    journal = lambda: zarr.open_group(str(out), mode="r")["napari_hires_journal/blocks"][...]  # noqa: E731

    def wait_for_click(*_: object) -> None:
        calls.append(1)
        if len(calls) >= 2:
            assert clicked.wait(WAIT_MS / 1000)

    def cancel_after_first_block(event: object) -> None:
        if isinstance(event, BlockWritten) and not clicked.is_set():
            widget.cancel_button.native.click()
            clicked.set()

    net = widget.load_model(MODEL_FILE, model_file)  # the instance the widget runs
    hook = net.register_forward_pre_hook(wait_for_click)
    try:
        widget.run_button.native.click()
        widget.worker.yielded.connect(cancel_after_first_block)
        wait_for_run(qtbot, widget)
    finally:
        hook.remove()
    first = widget.result
    assert first.cancelled and 1 <= first.blocks_done < first.blocks_total
    assert widget.status.value.startswith("cancelled")
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    done = first.blocks_done
    assert re.match(rf"resumable: {done} of 4 blocks done", widget.resume.value)
    # The layer shows the written blocks, and only those.
    shown = np.asarray(labels_layer(viewer, out).data[0])
    block = 1024
    for (r, c), written in np.ndenumerate(journal()):
        tile = (slice(r * block, (r + 1) * block), slice(c * block, (c + 1) * block))
        if written:
            np.testing.assert_array_equal(shown[tile], direct[tile])
        else:
            assert not shown[tile].any()
    assert journal().sum() == done

    widget.result = None
    widget.run_button.native.click()
    wait_for_run(qtbot, widget)
    second = widget.result
    assert not second.cancelled
    assert second.blocks_skipped == done and second.blocks_done == 4 - done
    assert widget.resume.value == ""
    layers = [lay for lay in viewer.layers if lay.metadata.get("source") == str(out)]
    assert len(layers) == 1  # the resumed run replaced the cancelled run's layer
    np.testing.assert_array_equal(np.asarray(layers[0].data[0]), direct)
    settle(qtbot, widget)


def test_scopes_in_pixels(make_napari_viewer, qtbot, model_file, slide, tmp_path):
    """The visible region and a rectangle in level-0 pixels of an image with a scale and an offset; a missing
    rectangle is a message in the form, not a traceback."""
    viewer = make_napari_viewer(show=True)
    widget, image = setup_widget(viewer, slide, model_file, tmp_path / "x.zarr")
    assert _layers.rectangle_region(widget.shapes.value, image) == REGION

    camera = _layers.camera(viewer)
    camera.center = (TRANSLATE[0] + 500 * SCALE[0], TRANSLATE[1] + 700 * SCALE[1])
    camera.zoom = 4.0  # 4 screen px per world unit: 2 per pixel of scale 0.5
    h, w = viewer.canvas.size
    y0, y1, x0, x1 = _layers.visible_region(viewer, image)
    assert abs((y0 + y1) / 2 - 500) <= 1 and abs((x0 + x1) / 2 - 700) <= 1
    assert abs((y1 - y0) - h / 4 / SCALE[0]) <= 2 and abs((x1 - x0) - w / 4 / SCALE[1]) <= 2

    camera.zoom = 0.01  # the whole slide and more: clipped to the image
    assert _layers.visible_region(viewer, image) == (0, 2048, 0, 2048)

    widget.shapes.value.data = []
    widget.run_button.native.click()
    assert widget.worker is None and widget.status.value.startswith("error: Shapes layer 'roi' has no shapes")
    settle(qtbot, widget)


RESTORER = "tiny_restorer_for_run_model_tests"


@pytest.fixture
def tiny_restorer(monkeypatch) -> None:
    """TinyRestorer in the model registry, for this test only."""
    registry.list_models()  # the built-in families first
    monkeypatch.setitem(registry._REGISTRY, RESTORER, registry.ModelEntry(
        RESTORER, "test", "restoration", TinyRestorer, "two convolutions"))


@pytest.mark.parametrize("name, tile, overlap", [(RESTORER, 128, 16), ("hct_tiny_cls", 128, 32)])
def test_restoration_image_and_classification_heatmap(make_napari_viewer, qtbot, tmp_path, tiny_restorer, name,
                                                      tile, overlap):
    """A restoration model gives an RGB Image of the restored pixels; a tile classifier an inferno heatmap of its
    positive class, one pixel per tile stride, centred on its cells; both as the engine computes them."""
    from napari_hires.engine.estimate import stored_progress
    from napari_hires.io.synthetic import render_region
    from napari_hires.widgets.run_model import registry_model

    pixels = render_region(0, 3000, 3300, 5000, 5300, size=(16384, 16384))  # 300 x 300 RGB
    viewer = make_napari_viewer(show=True)
    image = viewer.add_image(pixels, rgb=True, name="patch", scale=SCALE, translate=TRANSLATE)
    widget = RunModelWidget(viewer)
    widget.image.value = image
    widget.model.value = name
    widget.device.value = "cpu"
    widget.tile.value, widget.overlap.value = tile, overlap
    out = tmp_path / "out.zarr"
    widget.output.value = out
    widget.run_button.native.click()
    wait_for_run(qtbot, widget)
    assert not widget.result.cancelled and stored_progress(out) is None  # finished: nothing left to resume

    direct = tmp_path / "direct.zarr"
    predict(pixels, registry_model(name), direct, tile=tile, overlap=overlap, batch=2, device="cpu")
    want = zarr.open_group(str(direct), mode="r")["0"][...]
    (layer,) = [lay for lay in viewer.layers if lay.metadata.get("source") == str(out)]
    got = np.asarray(layer.data[0])
    if name == RESTORER:
        assert layer.rgb and got.shape == pixels.shape and got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.moveaxis(want, 0, -1))
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
    else:
        assert layer.colormap.name == "inferno" and tuple(layer.contrast_limits) == (0.0, 1.0)
        np.testing.assert_array_equal(got, want[-1])  # the positive (last) class
        assert got.shape == (4, 4)  # 300 px in tiles of stride 96
        np.testing.assert_allclose(layer.scale, np.asarray(SCALE) * 96)
        np.testing.assert_allclose(layer.translate, np.asarray(TRANSLATE) + 47.5 * np.asarray(SCALE))
    settle(qtbot, widget)


def test_engine_input_is_the_file_when_the_layer_shows_it(tmp_path):
    """A layer read from a file gives the engine that file (a stable run record, so a later session resumes);
    a layer whose data is not the file's level 0 gives its own pixels."""
    from napari.layers import Image

    from napari_hires.io.ome_zarr_writer import write_ome_zarr
    from napari_hires.io.readers import open_image

    image, _ = synthetic_slide((512, 512))
    path = write_ome_zarr(image, tmp_path / "slide.zarr", derive_levels=True, min_size=128)
    (data, meta, _kind), = open_image(path).layer_data()
    layer = Image(data, **meta)
    assert _layers.layer_source(layer) == str(path)
    assert _layers.engine_input(layer) == str(path)
    cropped = Image(np.asarray(data[0])[:256], rgb=True, metadata={"source": str(path)})
    assert isinstance(_layers.engine_input(cropped), np.ndarray)
    assert _layers.engine_input(Image(np.zeros((64, 64)))).shape == (64, 64)


def test_output_set_to_the_input_store_is_an_error_and_the_input_is_kept(make_napari_viewer, qtbot, model_file,
                                                                         tmp_path):
    """Run with the output path set to the store the layer was read from (and overwrite ticked): a clear status
    error, and not one byte of the input changed."""
    import hashlib

    from napari_hires.io.ome_zarr_writer import write_ome_zarr
    from napari_hires.io.readers import open_image

    image, labels = synthetic_slide((512, 512))
    path = write_ome_zarr(image, tmp_path / "slide.zarr", labels={"truth": labels}, chunk=256)
    files = lambda: {p: hashlib.sha1(p.read_bytes()).hexdigest()  # noqa: E731
                     for p in sorted(Path(path).rglob("*")) if p.is_file()}
    before = files()
    viewer = make_napari_viewer()
    (data, meta, _kind), = open_image(path).layer_data()
    layer = viewer.add_image(data, **meta)
    widget = RunModelWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = layer
    widget.model.value = MODEL_FILE
    widget.model_file.value = model_file
    widget.device.value = "cpu"
    widget.tile.value, widget.overlap.value = SETTINGS["tile"], SETTINGS["overlap"]
    widget.output.value = path
    widget.overwrite.value = True
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.status.value.startswith("error:") and "its own input" in widget.status.value
    assert widget.result is None and widget.run_button.enabled
    assert files() == before
    settle(qtbot, widget)


def test_status_says_how_a_16_bit_image_was_scaled(make_napari_viewer, qtbot, tmp_path):
    """A uint16 image goes to the model by its own range, and the status line says so (8-bit runs say nothing)."""
    from napari_hires.io.synthetic import render_region

    pixels = render_region(0, 3000, 3300, 5000, 5300, size=(16384, 16384)).astype(np.uint16) * 257
    viewer = make_napari_viewer(show=True)
    widget = RunModelWidget(viewer)
    widget.image.value = viewer.add_image(pixels, rgb=True, name="rgb16")
    widget.model.value = "hct_tiny_seg"
    widget.device.value = "cpu"
    widget.tile.value, widget.overlap.value = 128, 32
    widget.output.value = tmp_path / "out.zarr"
    widget.run_button.native.click()
    wait_for_run(qtbot, widget)
    assert widget.status.value.startswith("done") and "input uint16 scaled from 0..65535" in widget.status.value
    settle(qtbot, widget)


def test_an_output_locked_by_another_run_is_refused_naming_the_holder(make_napari_viewer, qtbot, slide, model_file,
                                                                     tmp_path):
    """While another run holds the output's lock, Run shows who holds it and writes nothing; once the lock is
    released the same form runs."""
    import os

    from napari_hires.io.output_lock import lock_output

    out = tmp_path / "locked.zarr"
    widget, _ = setup_widget(make_napari_viewer(), slide, model_file, out)
    with lock_output(out):
        widget.run_button.native.click()
        qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
        assert widget.status.value.startswith("error:"), widget.status.value
        assert "being written by another run" in widget.status.value and f"pid {os.getpid()}" in widget.status.value
        assert widget.result is None and not out.exists()
    widget.run_button.native.click()
    wait_for_run(qtbot, widget)
    assert widget.status.value.startswith("done")
    settle(qtbot, widget)


def test_a_progress_tick_after_the_result_keeps_the_done_status(make_napari_viewer, qtbot, slide, model_file,
                                                               tmp_path):
    """The progress timer may tick between the run's result and its end: the status must still say "done" (it read
    "4/4 blocks" on a fresh clone). The tick is made to land there by the timer's own signal, after the result."""
    widget, _ = setup_widget(make_napari_viewer(), slide, model_file, tmp_path / "tick.zarr")
    widget.run_button.native.click()

    def tick_after_result(_result) -> None:
        widget._dirty = True
        widget._refresh_timer.timeout.emit()

    widget.worker.returned.connect(tick_after_result)
    wait_for_run(qtbot, widget)
    assert widget.status.value.startswith("done"), widget.status.value
    settle(qtbot, widget)
