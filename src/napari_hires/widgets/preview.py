"""The "Restoration preview" dock widget: a restoration model over the region in view, redone when the camera stops.

Camera and dims events restart a single-shot timer (the debounce); when it fires, the visible box at the displayed
pyramid level goes to a :class:`~napari_hires.engine.preview.PreviewService`, which cancels older requests and caches
what it computed. Cells are computed from the centre of the view outwards and shown as they land (the rest shows the
image), so a slow model on a CPU shows something within a cell's time. Results come back to the main thread through
a Qt signal, stale ones are dropped, and the newest is placed in one "restoration preview" Image layer aligned over
the image. Compare modes: the preview over the image at the chosen opacity, a split (the preview cropped to the left
half of the view, the original on the right: napari clips 2-d layers only by their data, so the crop is of the
data), or the original alone (the preview hidden).
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future
from functools import partial
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, Label
from qtpy.QtCore import QObject, Qt, QTimer, Signal

from napari_hires.errors import HiresError
from napari_hires.io.pyramid import Pyramid
from napari_hires.widgets import _layers
from napari_hires.widgets._base import MODEL_FILE, DockWidget, model_choices
from napari_hires.widgets._status import message_rows, report_error

PREVIEW_LAYER = "restoration preview"
DEBOUNCE_MS = 250
#: The trained demo denoiser first, then the smallest untrained MAXIM.
PREFERRED_MODELS = ("maxim_nano.denoise_synthetic", "maxim_nano")
COMPARE_MODES = ("overlay", "split", "original")


def layer_pyramid(layer: Any) -> Pyramid:
    """The Pyramid behind a 2-d napari Image layer (grey or RGB), in the layer's world scale and translate."""
    _layers.check_plane(layer)
    levels = list(layer.data) if layer.multiscale else [layer.data]
    extra = (levels[0].shape[-1],) if layer.rgb else ()
    return Pyramid(
        levels=levels,
        axes="yxc" if layer.rgb else "yx",
        scale=tuple(float(s) for s in layer.scale) + (1.0,) * len(extra),
        translation=tuple(float(t) for t in layer.translate) + (0.0,) * len(extra),
        name=layer.name,
    )


def build_service(pyramid: Pyramid, model: str, device: str) -> Any:
    """Load ``model`` (a registered name or a model file) on ``device`` and start a PreviewService over ``pyramid``."""
    from napari_hires.engine import PreviewService, TileRunner, auto_batch, resolve_model

    net = resolve_model(model)
    if net.task != "restoration":
        raise HiresError(f"{model} is a {net.task} model; the preview needs a restoration model (e.g. maxim_nano)")
    return PreviewService(TileRunner(net, device=device, batch=auto_batch(device, preview=True)), pyramid)


def level_box(layer: Any, level: int, region: _layers.Region) -> tuple[int, int, int, int]:
    """The pixels of ``level`` of ``layer`` that meet ``region`` (y0, y1, x0, x1 in level-0 pixels)."""
    fy, fx = (float(f) for f in layer.downsample_factors[level][-2:]) if layer.multiscale else (1.0, 1.0)
    h, w = (layer.data[level] if layer.multiscale else layer.data).shape[:2]
    y0, y1, x0, x1 = region  # level-0 pixels cover [y0 - 0.5, y1 - 0.5]; level pixel j covers f*j -+ f/2
    return (max(0, math.floor((y0 - 0.5) / fy + 0.5)), min(h, math.ceil((y1 - 0.5) / fy + 0.5)),
            max(0, math.floor((x0 - 0.5) / fx + 0.5)), min(w, math.ceil((x1 - 0.5) / fx + 0.5)))


class _Relay(QObject):
    """Carries partial results and finished Futures from the service's thread to the main thread (queued signals)."""

    finished = Signal(int, object)
    partial = Signal(int, object)


class RestorationPreviewWidget(DockWidget):
    """Live restoration preview of the region in view, with opacity, split and before/after comparison."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        from napari.layers import Image

        from napari_hires.models import list_models

        self._camera = _layers.camera(napari_viewer)
        models = list_models(task="restoration", aliases=False)
        self.image = self.layer_choice("image", Image, where=lambda layer: layer.name != PREVIEW_LAYER)
        self.model_section(model_choices(models),
                           value=next((m for m in PREFERRED_MODELS if m in models), (models or [MODEL_FILE])[0]))
        self.device = self.device_choice()
        self.live = CheckBox(label="live preview", value=False,
                             tooltip="restore the region in view whenever the camera stops")
        self.opacity = FloatSlider(label="opacity", min=0.0, max=1.0, step=0.05, value=1.0)
        self.compare = ComboBox(label="compare", choices=list(COMPARE_MODES), value="overlay",
                                tooltip="overlay: the preview over the image at the opacity; split: the preview on "
                                        "the left half of the view, the original on the right; original: the image "
                                        "alone")
        self.status = Label(label="status", value="off")
        self._form = Container(widgets=[self.image, self.model, self.model_file, self.device, self.live,
                                        self.opacity, self.compare])
        self.set_content(self._form, message_rows(self.status))  # long messages wrap, whole lines

        self.service: Any = None  # the PreviewService of the current image, model and device
        self._service_key: tuple | None = None
        self._building: tuple | None = None  # key of a service being built on a worker thread
        self.requests = 0  # requests made so far
        self._generation = 0  # bumped per request and per cancel: results of older generations are stale
        self.future: Future | None = None  # the newest request
        self.result: Any = None  # the PreviewResult on screen
        self._requested: tuple | None = None  # (service, level, box) of the newest request
        self._moved_at = time.perf_counter()  # when the camera last moved (or the preview was asked for)
        self._last_view = self._view()
        self._fired_at = self._moved_at  # when the debounce timer last fired
        self._awaiting_draw: str | None = None  # "first" or "final" once a result is set, until its layer slices it
        self.first_ms: float | None = None  # camera stopped -> the first cells of the preview drawn
        self.latency_ms: float | None = None  # camera stopped -> the whole preview drawn, for the last result
        self.compute_ms: float | None = None  # debounce timer fired -> the whole preview drawn

        self._owned: list[Any] = []  # the service, for closing it should the widget be deleted without closeEvent
        self.destroyed.connect(partial(_close_all, self._owned))  # napari deletes dock widgets without closing them
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)  # a coarse timer may fire 5% early
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._on_timer)
        self._relay = _Relay(self)
        self._relay.finished.connect(self._on_finished)
        self._relay.partial.connect(self._on_partial)

        self.model.changed.connect(self._on_source_changed)
        self.model_file.changed.connect(self._on_source_changed)
        self.image.changed.connect(self._on_source_changed)
        self.device.changed.connect(self._on_source_changed)
        self.live.changed.connect(self._on_live)
        self.opacity.changed.connect(self._apply_opacity)
        self.compare.changed.connect(self._show)
        self._connections = [
            (self._camera.events.center, self._on_camera),
            (self._camera.events.zoom, self._on_camera),
            (napari_viewer.dims.events.current_step, self._on_camera),
            (napari_viewer.dims.events.ndisplay, self._on_camera),
            (napari_viewer.canvas.events.size, self._on_camera),
            (napari_viewer.layers.events.removed, self._on_layer_removed),
        ]
        for emitter, callback in self._connections:
            emitter.connect(callback)

    # ------------------------------------------------------------------ choices
    def _model_spec(self) -> str | None:
        if self.model.value != MODEL_FILE:
            return self.model.value
        path = str(self.model_file.value)
        return None if path in ("", ".") else path

    def _key(self) -> tuple | None:
        layer, spec = self.image.value, self._model_spec()
        return None if layer is None or spec is None else (id(layer), spec, self.device.value)

    # ------------------------------------------------------------------ events
    def _view(self) -> tuple:
        """What decides the region in view: camera, canvas size, 2-d/3-d, and the slice of non-displayed dims."""
        dims, camera = self.viewer.dims, self._camera
        return (tuple(camera.center[-2:]), camera.zoom, tuple(self.viewer.canvas.size), dims.ndisplay,
                tuple(dims.current_step[i] for i in dims.not_displayed))

    def _on_camera(self, _event: Any = None) -> None:
        """Restart the debounce when the view really changed (layers coming and going re-emit dims events)."""
        view = self._view()
        if view == self._last_view:
            return
        self._last_view = view
        if self.live.value:
            self._moved_at = time.perf_counter()
            self._timer.start()

    def _on_timer(self) -> None:
        self._fired_at = time.perf_counter()
        self.refresh()

    def _on_layer_removed(self, event: Any) -> None:
        if getattr(event.value, "name", None) == PREVIEW_LAYER:
            self._requested = None  # the user deleted the preview: show the next result in any case

    def _on_source_changed(self, _value: Any = None) -> None:
        """A new image, model or device: the old service and its preview go, the next refresh builds a new one."""
        self._drop_service()
        self._remove_layer()
        if self.live.value:
            self._moved_at = time.perf_counter()
            self.refresh()

    def _on_live(self, on: bool) -> None:
        if on:
            self._moved_at = time.perf_counter()
            self._fired_at = self._moved_at
            self.refresh()
            return
        self._timer.stop()
        self._cancel_pending()
        self._remove_layer()
        self.status.value = "off"

    # ------------------------------------------------------------------ requests
    def refresh(self) -> None:
        """Request the preview of the visible box at the displayed level (building the service first if needed)."""
        if not self.live.value:
            return
        layer, key = self.image.value, self._key()
        if key is None:
            self.status.value = "choose an image layer and a model"
            return
        if self.viewer.dims.ndisplay != 2:
            self.status.value = "the preview works in the 2-d view"
            return
        if self.service is None or self._service_key != key:
            self._start_service(layer, key)
            return
        region = _layers.visible_region(self.viewer, layer)
        if region is None:
            self.status.value = "the image is out of view"
            return
        level = layer.data_level
        box = level_box(layer, level, region)
        if self._requested == (self.service, level, box):
            return  # the same view: what is on screen (or coming) is current
        self.requests += 1
        self._generation += 1
        generation = self._generation
        try:
            future = self.service.request(level, box, partial=partial(self._emit, self._relay.partial, generation))
        except HiresError as err:
            self.status.value = f"error: {err}"
            return
        self.future, self._requested = future, (self.service, level, box)
        self.first_ms = None
        if not future.done():
            self.status.value = f"restoring level {level}, {box[1] - box[0]} x {box[3] - box[2]} px..."
        future.add_done_callback(partial(self._emit, self._relay.finished, generation))

    @staticmethod
    def _emit(signal: Any, generation: int, payload: Any) -> None:
        """Runs on the service's thread (a partial result, a finished Future); the signal hands it to the main
        thread."""
        try:
            signal.emit(generation, payload)
        except RuntimeError:  # the widget was deleted meanwhile
            pass

    def _on_partial(self, generation: int, result: Any) -> None:
        if generation != self._generation or not self.live.value:
            return
        self.result = result
        self._show_awaiting("first" if self.first_ms is None else None)
        h, w = result.box.shape
        self.status.value = (f"restoring level {result.level}, {h} x {w} px: {result.cells - result.missing} of "
                             f"{result.cells} cells")

    def _on_finished(self, generation: int, future: Future) -> None:
        if generation != self._generation or future.cancelled() or not self.live.value:
            return  # stale: a newer request (or switching off) superseded it
        err = future.exception()
        if err is not None:
            self._report(err)
            return
        self.result, self.latency_ms, self.compute_ms = future.result(), None, None
        self._show_awaiting("final")

    def _cancel_pending(self) -> None:
        self._generation += 1
        if self.future is not None:
            self.future.cancel()  # cancels its token: the service stops between tile batches
        self._requested = None

    # ------------------------------------------------------------------ service
    def _start_service(self, layer: Any, key: tuple) -> None:
        """Build the service on a worker thread (loading a model can take seconds); refresh when it is ready."""
        from napari.qt.threading import create_worker

        self._drop_service()
        if self._building == key:
            return
        try:
            pyramid = layer_pyramid(layer)
        except HiresError as err:
            self.status.value = f"error: {err}"
            return
        self._building = key
        self.status.value = f"loading {key[1]}..."
        worker = create_worker(build_service, pyramid, key[1], key[2], _start_thread=False)
        worker.returned.connect(lambda service, key=key: self._service_ready(key, service))
        worker.errored.connect(lambda err, key=key: self._service_failed(key, err))
        worker.start()

    def _service_ready(self, key: tuple, service: Any) -> None:
        if self._building == key:
            self._building = None
        if key != self._key() or self.service is not None:
            _close_later(service)  # the choice changed while it loaded
            return
        self.service, self._service_key = service, key
        self._owned[:] = [service]
        if self.live.value:
            self.refresh()

    def _service_failed(self, key: tuple, err: BaseException) -> None:
        if self._building == key:
            self._building = None
        self._report(err)

    def _report(self, err: BaseException) -> None:
        """User errors (a wrong model or image) go to the status line; anything else is a bug: re-raise it."""
        report_error(self.status, err, (HiresError,))

    def _drop_service(self) -> None:
        """Cancel pending work and close the service off the main thread (closing waits for the current batch)."""
        self._cancel_pending()
        if self.service is not None:
            _close_later(self.service)
        self.service, self._service_key = None, None
        self._owned.clear()

    # ------------------------------------------------------------------ display
    def _show_awaiting(self, kind: str | None) -> None:
        """Show the current result and time it ("first" cells or "final") once the preview layer has sliced it for
        the canvas (its public ``set_data`` event); a hidden layer, which does not slice, counts as shown at once."""
        self._awaiting_draw = kind
        self._show()
        if self._awaiting_draw is not None:
            self._on_draw()

    def _show(self, _value: Any = None) -> None:
        """Put the current result in the preview layer, cropped for the split and hidden for "original"."""
        result = self.result
        if result is None or not self.live.value:
            return
        data = result.data[..., 0] if result.data.ndim == 3 and result.data.shape[-1] == 1 else result.data
        if self.compare.value == "split":
            x_mid = self._camera.center[-1]
            keep = min(data.shape[1], max(0, math.ceil((x_mid - result.translate[1]) / result.scale[1])))
            data = data[:, :max(keep, 1)]
        else:
            keep = data.shape[1]
        layer = self._preview_layer(data)
        layer.data = data
        layer.scale, layer.translate = result.scale, result.translate
        layer.visible = self.compare.value != "original" and keep > 0

    def _preview_layer(self, data: np.ndarray) -> Any:
        """The preview layer, made (or remade, when RGB-ness changed) to show ``data`` like the image."""
        rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
        layer = self._find_layer()
        if layer is not None and layer.rgb == rgb:
            return layer
        if layer is not None:
            self.viewer.layers.remove(layer)
        image = self.image.value
        kwargs: dict[str, Any] = {"rgb": rgb, "opacity": self.opacity.value, "name": PREVIEW_LAYER}
        if image is not None and not (rgb and data.dtype == np.uint8):
            kwargs["contrast_limits"] = list(image.contrast_limits)  # the same display mapping as the original
        if image is not None and not rgb:
            kwargs["colormap"] = image.colormap
        if image is not None:
            kwargs["affine"] = image.affine
        active = self.viewer.layers.selection.active
        layer = self.viewer.add_image(data, **kwargs)
        layer.events.set_data.connect(self._on_draw)
        if active is not None:
            self.viewer.layers.selection.active = active  # adding selected the preview: give the user theirs back
        return layer

    def _find_layer(self) -> Any:
        return next((ly for ly in self.viewer.layers if ly.name == PREVIEW_LAYER), None)

    def _remove_layer(self) -> None:
        self.result = None
        layer = self._find_layer()
        if layer is not None:
            self.viewer.layers.remove(layer)

    def _apply_opacity(self, value: float) -> None:
        layer = self._find_layer()
        if layer is not None:
            layer.opacity = value

    # ------------------------------------------------------------------ latency
    def _on_draw(self, _event: Any = None) -> None:
        if self._awaiting_draw is None:
            return
        now = time.perf_counter()
        kind, self._awaiting_draw = self._awaiting_draw, None
        if kind == "first":
            self.first_ms = (now - self._moved_at) * 1000
            return
        self.latency_ms = (now - self._moved_at) * 1000
        self.compute_ms = (now - max(self._fired_at, self._moved_at)) * 1000
        self.status.value = self._status_text()

    def _status_text(self) -> str:
        result = self.result
        h, w = result.box.shape
        cache = ""
        if self.service is not None:
            cells, size = self.service.cache_info
            cache = f", cache {size / 2**20:.1f} MB ({cells} cells)"
        first = "" if self.first_ms is None else f"first cells {self.first_ms:.0f} ms, "
        return (f"level {result.level}, {h} x {w} px: {first}all on screen {self.latency_ms:.0f} ms after the camera "
                f"stopped ({self.compute_ms:.0f} ms after the {DEBOUNCE_MS} ms wait){cache}")

    # ------------------------------------------------------------------ closing
    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        """Stop the timer, cancel work, close the service (its thread stops) and disconnect from the viewer."""
        self.live.value = False
        self._timer.stop()
        self._drop_service()
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        self._connections = []
        super().closeEvent(event)


def _close_all(services: list[Any], *_: object) -> None:
    """Close every service in ``services`` (the widget owning them is being deleted)."""
    for service in services:
        _close_later(service)
    services.clear()


def _close_later(service: Any) -> None:
    """Close ``service`` on a short-lived thread: ``close`` waits for the running tile batch to end."""
    threading.Thread(target=service.close, name="hires-preview-close", daemon=True).start()
