"""The live restoration preview in a real viewer: it covers the view with the model's output, follows the camera
once it stops, drops stale work, compares with the original, and stops when switched off or closed."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_hires.engine import TileRunner, predict_rectangle
from napari_hires.engine.source import as_source
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import registry
from napari_hires.models.files import save_model
from napari_hires.widgets.preview import DEBOUNCE_MS, MODEL_FILE, PREVIEW_LAYER, RestorationPreviewWidget
from tiny_restorer import TinyRestorer

MODEL = "tiny_restoration_for_preview_tests"
WAIT_MS = 20_000  # generous: the machine is shared


class Gate:
    """Counts forward calls of every model built by the registry entry; ``hold()`` makes the next call wait."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()

    def hold(self) -> None:
        self.entered.clear()
        self.release.clear()

    def __call__(self, *_: object) -> None:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(WAIT_MS / 1000)


@pytest.fixture
def gate(monkeypatch) -> Gate:
    """TinyRestorer registered (for this test only) as a restoration model whose forward calls pass ``gate``."""
    gate = Gate()

    def build(**_: object) -> TinyRestorer:
        model = TinyRestorer()
        model.register_forward_pre_hook(gate)
        return model

    registry.list_models()  # load the built-in families first
    monkeypatch.setitem(registry._REGISTRY, MODEL,
                        registry.ModelEntry(MODEL, "test", "restoration", build, "two convolutions"))
    return gate


@pytest.fixture(scope="module")
def slide():
    """A noisy synthetic slide of 1024 x 1024 px (levels of 512 and 256), rendered once into memory."""
    image, _ = synthetic_slide((1024, 1024), variant="noisy", chunk=256, min_size=256)
    return image.with_levels([da.from_array(lv.compute(), chunks=(256, 256, 3)) for lv in image.levels])


@pytest.fixture
def setup(make_napari_viewer, qtbot, slide, gate):
    """A shown viewer with the slide (placed at a scale and offset) and the preview widget docked."""
    viewer = make_napari_viewer(show=True)
    (data, meta, _kind), = slide.layer_data()
    meta.update(scale=(0.5, 0.5), translate=(100.0, -40.0))
    image = viewer.add_image(data, **meta)
    widget = RestorationPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.window.resize(1100, 700)
    widget.model.value = MODEL
    widget.device.value = "cpu"
    yield viewer, image, widget
    widget.close()


def look_at(viewer, center: tuple[float, float], zoom: float) -> None:
    """Move the camera as panning and zooming would (napari 0.9 keeps it in viewer.scene)."""
    camera = getattr(viewer, "scene", viewer).camera
    camera.center = center
    camera.zoom = zoom


def wait_for_box(qtbot, widget, count: int) -> None:
    """Wait until ``count`` requests were made and the newest one's result is in the preview layer, drawn."""

    def shown() -> bool:
        f = widget.future
        return (widget.requests >= count and f is not None and f.done() and not f.cancelled()
                and widget.result is f.result() and widget.latency_ms is not None)

    try:
        qtbot.waitUntil(shown, timeout=WAIT_MS)
    except Exception:
        raise AssertionError(f"no preview on screen after {WAIT_MS} ms; status: {widget.status.value!r}, "
                             f"requests: {widget.requests}, newest: {widget.future}") from None


def view_in_world(viewer) -> np.ndarray:
    """The canvas's corners in world (y, x), as napari's own canvas computes them."""
    corners = viewer.window._qt_viewer.canvas._viewbox_corners_in_world
    return np.array([corners.min(0)[-2:], corners.max(0)[-2:]])


def layer_edges(layer, shape: tuple[int, int]) -> np.ndarray:
    """World (y, x) of the outer pixel edges of a layer with ``shape`` pixels."""
    scale, translate = np.asarray(layer.scale), np.asarray(layer.translate)
    return np.array([translate - scale / 2, translate + (np.asarray(shape) - 0.5) * scale])


def check_shows_model_output(viewer, image, widget, slide) -> None:
    """The preview layer covers the visible part of the image with the engine's output for that box and level."""
    preview = viewer.layers[PREVIEW_LAYER]
    result = widget.result
    level = image.data_level
    assert result.level == level
    h, w = slide.level_yx_shape(level)
    view = view_in_world(viewer)
    visible = np.clip(view, *layer_edges_of_level(image, level, (h, w)))
    covered = layer_edges(preview, preview.data.shape[:2])
    assert np.all(covered[0] <= visible[0] + 1e-6) and np.all(covered[1] >= visible[1] - 1e-6)
    # no more than a pixel of the level beyond the view on any side
    pixel = np.asarray(image.scale) * np.asarray(image.downsample_factors[level])
    assert np.all(covered[0] >= visible[0] - pixel - 1e-6) and np.all(covered[1] <= visible[1] + pixel + 1e-6)
    box = result.box
    runner = TileRunner(TinyRestorer(), device="cpu")
    expected = predict_rectangle(runner, as_source(slide, level), box, widget.service.layout)
    assert preview.data.shape == expected.shape and preview.rgb
    diff = np.abs(np.asarray(preview.data).astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # cells vs one rectangle: float sums round alike
    assert not np.array_equal(expected, np.asarray(image.data[level])[box.y0:box.y1, box.x0:box.x1])


def layer_edges_of_level(image, level: int, shape: tuple[int, int]) -> np.ndarray:
    """World (y, x) of the outer edges of ``level`` of a multiscale image layer."""
    pixel = np.asarray(image.scale) * np.asarray(image.downsample_factors[level])
    translate = np.asarray(image.translate)
    return np.array([translate - pixel / 2, translate + (np.asarray(shape) - 0.5) * pixel])


def test_preview_covers_the_view_with_the_model_output(setup, qtbot, slide, capsys):
    viewer, image, widget = setup
    look_at(viewer, (100 + 0.5 * 300, -40 + 0.5 * 420), 2.0)  # level 0, near the top left
    qtbot.wait(50)
    widget.live.value = True
    wait_for_box(qtbot, widget, 1)
    assert image.data_level == 0
    check_shows_model_output(viewer, image, widget, slide)
    cold = widget.latency_ms  # from switching on: loading the model included

    look_at(viewer, (100 + 0.5 * 600, -40 + 0.5 * 900), 0.6)  # zoomed out, over the right edge
    wait_for_box(qtbot, widget, widget.requests + 1)
    assert image.data_level > 0
    check_shows_model_output(viewer, image, widget, slide)
    assert widget.latency_ms >= DEBOUNCE_MS and 0 < widget.compute_ms <= widget.latency_ms - DEBOUNCE_MS + 1
    assert f"{widget.latency_ms:.0f} ms" in widget.status.value and "cache" in widget.status.value
    with capsys.disabled():
        print(f"\npreview latency, camera stopped -> preview drawn: {widget.latency_ms:.0f} ms at level "
              f"{image.data_level} ({widget.compute_ms:.0f} ms after the {DEBOUNCE_MS} ms debounce); "
              f"{cold:.0f} ms from switching on (model load included)")


def test_quick_moves_make_one_request_and_a_newer_request_cancels_a_running_one(setup, qtbot, slide, gate):
    viewer, image, widget = setup
    look_at(viewer, (250, 150), 2.0)
    widget.live.value = True
    wait_for_box(qtbot, widget, 1)

    # Three moves in quick succession (well within the debounce): one request, for the last place.
    made = widget.requests
    for cx in (180.0, 220.0, 260.0):
        look_at(viewer, (300, cx), 2.0)
        qtbot.wait(30)
    wait_for_box(qtbot, widget, made + 1)
    qtbot.wait(400)  # longer than the debounce: nothing else is asked for
    assert widget.requests == made + 1
    check_shows_model_output(viewer, image, widget, slide)

    # A request still running when the camera moves on is cancelled between tile batches.
    gate.hold()
    look_at(viewer, (420, 300), 2.0)  # a place not cached yet
    qtbot.waitUntil(gate.entered.is_set, timeout=WAIT_MS)
    stale = widget.future
    look_at(viewer, (500, 380), 2.0)
    qtbot.waitUntil(stale.cancelled, timeout=WAIT_MS)
    gate.release.set()
    wait_for_box(qtbot, widget, widget.requests)
    assert widget.future is not stale
    check_shows_model_output(viewer, image, widget, slide)


def test_first_cells_show_while_the_rest_are_computed(setup, qtbot, slide, gate):
    viewer, image, widget = setup
    look_at(viewer, (250, 150), 2.0)
    widget.live.value = True
    wait_for_box(qtbot, widget, 1)
    held: list[bool] = []

    def hold_once(*_: object) -> None:  # on the service's thread, as it hands over its first partial result
        if not held:
            held.append(True)
            gate.hold()

    widget._relay.partial.connect(hold_once, Qt.ConnectionType.DirectConnection)
    look_at(viewer, (450, 350), 2.0)  # a place not cached yet: several cells
    qtbot.waitUntil(lambda: bool(held) and gate.entered.is_set(), timeout=WAIT_MS)  # the next cell waits
    qtbot.waitUntil(lambda: widget.first_ms is not None, timeout=WAIT_MS)
    shown = widget.result
    assert 0 < shown.missing < shown.cells and f"of {shown.cells} cells" in widget.status.value
    np.testing.assert_array_equal(viewer.layers[PREVIEW_LAYER].data, shown.data)
    assert widget.first_ms >= DEBOUNCE_MS
    gate.release.set()
    wait_for_box(qtbot, widget, widget.requests)
    assert widget.result.missing == 0 and widget.first_ms < widget.latency_ms
    assert "first cells" in widget.status.value
    check_shows_model_output(viewer, image, widget, slide)


def test_compare_modes_and_opacity(setup, qtbot, slide):
    viewer, image, widget = setup
    look_at(viewer, (250, 150), 2.0)
    widget.live.value = True
    wait_for_box(qtbot, widget, 1)
    preview = viewer.layers[PREVIEW_LAYER]
    full = np.asarray(preview.data).copy()

    widget.opacity.value = 0.4
    assert preview.opacity == pytest.approx(0.4)

    widget.compare.value = "split"  # the preview on the left half of the view, the original on the right
    centre_x = getattr(viewer, 'scene', viewer).camera.center[-1]
    right_edge = preview.translate[1] + (preview.data.shape[1] - 0.5) * preview.scale[1]
    assert preview.visible and preview.data.shape[1] < full.shape[1]
    assert abs(right_edge - centre_x) <= preview.scale[1]
    np.testing.assert_array_equal(preview.data, full[:, :preview.data.shape[1]])
    before = viewer.screenshot(canvas_only=True, flash=False)

    widget.compare.value = "original"
    assert not preview.visible
    original = viewer.screenshot(canvas_only=True, flash=False)
    w = original.shape[1]
    # the right half looks the same with and without the split preview, the left half does not
    assert np.array_equal(before[:, w // 2 + 4:], original[:, w // 2 + 4:])
    assert not np.array_equal(before[:, :w // 2 - 4], original[:, :w // 2 - 4])

    widget.compare.value = "overlay"
    assert preview.visible
    np.testing.assert_array_equal(preview.data, full)


def test_switching_off_cancels_and_removes_and_closing_stops_the_thread(setup, qtbot, gate):
    viewer, image, widget = setup
    look_at(viewer, (250, 150), 2.0)
    widget.live.value = True
    wait_for_box(qtbot, widget, 1)
    service = widget.service

    gate.hold()
    look_at(viewer, (450, 350), 2.0)
    qtbot.waitUntil(gate.entered.is_set, timeout=WAIT_MS)
    pending = widget.future
    widget.live.value = False
    assert pending.cancelled() and PREVIEW_LAYER not in viewer.layers
    calls = gate.calls
    gate.release.set()
    qtbot.wait(300)
    assert gate.calls == calls  # the batch under way ends and no other starts
    look_at(viewer, (300, 200), 1.0)
    qtbot.wait(400)
    assert PREVIEW_LAYER not in viewer.layers and gate.calls == calls  # off: moving asks for nothing
    assert widget.status.value == "off"

    widget.live.value = True  # on again: the same service, its cache still warm
    wait_for_box(qtbot, widget, widget.requests)
    assert widget.service is service and PREVIEW_LAYER in viewer.layers

    widget.close()
    qtbot.waitUntil(lambda: not service.alive, timeout=WAIT_MS)
    assert widget.service is None and PREVIEW_LAYER not in viewer.layers


def test_model_file_and_errors(setup, qtbot, slide, tmp_path):
    viewer, image, widget = setup
    model = registry.create_model(MODEL)
    path = save_model(model, tmp_path / "restorer")
    look_at(viewer, (250, 150), 2.0)
    widget.model.value = MODEL_FILE
    assert widget.model_file.visible
    widget.live.value = True
    assert "choose" in widget.status.value  # no file yet
    widget.model_file.value = path
    wait_for_box(qtbot, widget, 1)
    check_shows_model_output(viewer, image, widget, slide)

    grey = viewer.add_image(np.zeros((2, 64, 64), np.uint8), name="stack")
    widget.image.value = grey
    qtbot.waitUntil(lambda: "2-d images" in widget.status.value, timeout=WAIT_MS)
    assert widget.service is None
