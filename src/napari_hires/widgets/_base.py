"""What the dock widgets share: a scrolling form, layer choices that follow the viewer, the region in view or under a
rectangle, the model section (a model list and a model file), the devices that exist, an output path that follows
the form until the user edits it, and a job in a napari worker with progress, time left and cancel.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from magicgui.widgets import ComboBox, FileEdit
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

from napari_hires.errors import HiresError

MODEL_FILE = "model file..."
#: What the model-file chooser offers: napari-hires model files and the published checkpoints it imports.
MODEL_FILE_FILTER = "*.safetensors *.json *.pth *.pt *.bin *.ckpt *.npz"
PROGRESS_MS = 100  # how often a job's progress callback is shown


class JobCancelled(Exception):
    """Raised from a job's progress callback once Cancel was clicked; the job stops there."""


def available_devices() -> list[str]:
    """The one device list of every widget: "auto", "cpu", and the accelerators this torch can use."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def chosen_path(value: Any) -> Path | None:
    """A FileEdit's path, or None when nothing was chosen (magicgui shows an empty field as ".")."""
    text = str(value or "")
    return Path(text) if text and text != "." else None


def free_path(folder: Path, stem: str, suffix: str, taken: Any) -> Path:
    """``folder/stem{suffix}``, or ``stem-2``, ``stem-3``... when ``taken(path)`` says it is used."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") or "model"
    path, n = folder / f"{stem}{suffix}", 2
    while taken(path):
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    return path


def trained_on(name: str) -> str | None:
    """What the registered model ``name`` was trained on, in a few words; None for an untrained architecture."""
    from napari_hires.models import model_entry

    entry = model_entry(name)
    return (entry.trained_on or "its shipped data") if entry.trained else None


def synthetic_note(model: Any, layer: Any) -> str:
    """A warning line when ``model`` learnt the synthetic slide only and ``layer`` shows another image; else ""."""
    from napari_hires.widgets._layers import is_synthetic_slide

    card = model.card  # None for an architecture without trained weights
    data = (card.provenance.get("data") or {}) if card is not None else {}
    if "synthetic_slide" not in data or is_synthetic_slide(layer):
        return ""
    return "this model was trained on the synthetic slide only: on this image its output is a demo, not a measurement"


def model_choices(names: Iterable[str], detail: Callable[[str], str] | None = None) -> list[tuple[str, str]]:
    """A model list: trained models first, each saying what it was trained on, then the untrained architectures
    marked as such (their output is random), then the model-file entry; ``detail(name)`` adds to a label."""
    from napari_hires.models import model_entry

    rows = []
    for name in names:
        entry = model_entry(name)
        what = trained_on(name)
        parts = [entry.task, f"trained on {what}" if what else "untrained: random weights"]
        if detail is not None and (extra := detail(name)):
            parts.append(extra)
        rows.append((what is None, f"{name} ({', '.join(parts)})", name))
    rows.sort(key=lambda row: row[0])  # stable: the registry's order within trained and untrained
    return [(label, name) for _, label, name in rows] + [(MODEL_FILE, MODEL_FILE)]


class DockWidget(QWidget):
    """A dock widget whose form scrolls (four docks fit a small screen), with the shared sections as builders."""

    def __init__(self, viewer: Any = None) -> None:
        super().__init__()
        self.viewer = viewer
        self.worker: Any = None
        self.cancel_token: Any = None
        self.status: Any = None  # a magicgui Label, made by the widget
        self._layer_combos: list[ComboBox] = []
        self._job_buttons: tuple[Any, Any] = (None, None)
        self._output_auto = True
        self._done_total = (0, 1)
        self._progress_bar: Any = None
        self._job_status, self._job_started = "", 0.0
        self._progress_timer = QTimer(self)
        self._progress_timer.setInterval(PROGRESS_MS)
        self._progress_timer.timeout.connect(self.show_progress)
        self.content = QWidget()
        self.content_layout = QVBoxLayout(self.content)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(scroll)
        if viewer is not None:
            events = viewer.layers.events
            for event in (events.inserted, events.removed, events.moved):
                event.connect(self.refresh_layer_choices)

    def set_content(self, *parts: Any) -> None:
        """Lay out ``parts`` (magicgui widgets or Qt widgets) top to bottom in the scrolling area."""
        for part in parts:
            self.content_layout.addWidget(getattr(part, "native", part))
        self.content_layout.addStretch()

    # ------------------------------------------------------------------ layers
    def layer_choice(self, label: str, kinds: type | tuple[type, ...], *, where: Callable[[Any], bool] | None = None,
                     names: bool = False, nullable: bool = False, **kwargs: Any) -> ComboBox:
        """A ComboBox of the viewer's layers of ``kinds`` (those ``where`` accepts; their names if ``names``) that
        follows the viewer: refreshed as layers come, go or move, and taking the first when it has none."""
        def choices(_widget: Any = None) -> list[Any]:
            layers = [ly for ly in self.viewer.layers if isinstance(ly, kinds) and (where is None or where(ly))]
            return [ly.name for ly in layers] if names else layers

        combo = ComboBox(label=label, choices=choices, nullable=nullable, **kwargs)
        self._layer_combos.append(combo)
        self._pick_first(combo)
        return combo

    def refresh_layer_choices(self, _event: Any = None) -> None:
        """Re-read every layer choice from the viewer."""
        for combo in self._layer_combos:
            combo.reset_choices()
            self._pick_first(combo)

    @staticmethod
    def _pick_first(combo: ComboBox) -> None:
        layers = [c for c in combo.choices if c is not None]  # nullable combos list None first
        if combo.value is None and layers:
            combo.value = layers[0]

    def view_or_rectangle(self, layer: Any, *, rectangle: bool) -> Any:
        """The level-0 pixels of ``layer`` in view, or under the rectangle of ``self.shapes`` (the selected, else
        the first shape); raises HiresError saying what to do when there are none."""
        from napari_hires.widgets import _layers

        if not rectangle:
            region = _layers.visible_region(self.viewer, layer)
            if region is None:
                raise HiresError(f"{layer.name!r} is not in view: pan to it, or choose another region")
            return region
        shapes = self.shapes.value
        if shapes is None:
            raise HiresError("no Shapes layer: add one, draw a rectangle on it and choose it as the rectangle")
        region = _layers.rectangle_region(shapes, layer)
        if region is None:
            raise HiresError(f"the rectangle on {shapes.name!r} does not overlap {layer.name!r}: draw it on the image")
        return region

    # ------------------------------------------------------------------ model
    def model_section(self, choices: list[Any], value: Any = None) -> None:
        """``self.model`` (the list, with a model-file entry) and ``self.model_file``, shown when that is chosen."""
        self.model = ComboBox(label="model", choices=choices, **({} if value is None else {"value": value}))
        self.model_file = FileEdit(label="model file", mode="r", filter=MODEL_FILE_FILTER, visible=False,
                                   tooltip="NAME.safetensors with its NAME.json card, or a published checkpoint "
                                           "(HCT or xT .pth, timm MaxViT .safetensors/.pth, MAXIM .npz), "
                                           "imported as it is loaded")
        self.model.changed.connect(self._show_model_file)

    def _show_model_file(self, _value: Any = None) -> None:
        self.model_file.visible = self.model.value == MODEL_FILE

    def chosen_model(self) -> str:
        """The registered name, or the model file's path (checked to exist); raises HiresError saying what to fix."""
        if self.model.value != MODEL_FILE:
            return str(self.model.value)
        path = str(self.model_file.value)
        if path in ("", ".") or not Path(path).exists():
            raise HiresError(f"model file {path!r} does not exist: choose a NAME.safetensors with its NAME.json, or a "
                             "published checkpoint")
        return path

    def model_stem(self) -> str:
        """The chosen model's name for file names: the registered name or the model file's stem."""
        if self.model.value == MODEL_FILE:
            return Path(str(self.model_file.value)).stem or "model"
        return str(self.model.value)

    # ------------------------------------------------------------------ device
    @staticmethod
    def device_choice() -> ComboBox:
        """The devices that exist here, "auto" chosen."""
        return ComboBox(label="device", choices=available_devices(), value="auto")

    # ------------------------------------------------------------------ output
    def output_choice(self, label: str, filter: str, tooltip: str) -> FileEdit:  # noqa: A002 - magicgui's name
        """``self.output``: a path the widget proposes (``set_auto_output``) until the user edits it."""
        self.output = FileEdit(label=label, mode="w", filter=filter, tooltip=tooltip)
        self.output.changed.connect(self._on_output_edited)
        return self.output

    def _on_output_edited(self, _value: Any = None) -> None:
        self._output_auto = False
        self.on_output_changed()

    def on_output_changed(self) -> None:
        """Called after the output path changed, by the user or the widget."""

    def set_auto_output(self, path: Path | None) -> None:
        """Propose ``path`` as the output without counting it as the user's choice."""
        if path is None:
            return
        with self.output.changed.blocked():
            self.output.value = path
        self.on_output_changed()

    # ------------------------------------------------------------------ jobs
    def job_buttons(self, start: Any, cancel: Any = None) -> None:
        """The buttons that start and cancel this widget's job (enabled as the job runs and ends)."""
        self._job_buttons = (start, cancel)
        if cancel is not None:
            cancel.enabled = False
            cancel.changed.connect(self.cancel)

    def run_job(self, func: Callable, *args: Any, status: str, returned: Callable, yielded: Callable | None = None,
                errored: Callable | None = None, bar: Any = None, token: Any = None, **kwargs: Any) -> None:
        """Start ``func(*args, **kwargs)`` in a napari worker; Cancel cancels ``token`` (the job's CancelToken, else
        a fresh one for ``record_progress``), the buttons follow the job, ``status`` shows, ``bar`` (a ProgressBar)
        follows ``record_progress``; ``on_job_finished`` ends it."""
        from napari.qt.threading import create_worker

        from napari_hires.engine import CancelToken

        self.cancel_token = token if token is not None else CancelToken()
        connect = {"returned": self._after_progress(returned), "errored": self._after_progress(errored or self.on_error),
                   "finished": self._job_finished}
        if yielded is not None:
            connect["yielded"] = yielded
        self.worker = create_worker(func, *args, **kwargs, _start_thread=False, _connect=connect)
        self._set_running(True)
        self.status.value = status
        self._progress_bar, self._done_total = bar, (0, 1)
        self._job_status, self._job_started = status, time.perf_counter()
        if bar is not None:
            self._progress_timer.start()
        self.worker.start()

    def _after_progress(self, callback: Callable) -> Callable:
        """``callback`` once the progress timer has stopped, so that no tick covers the job's last words."""
        def call(value: Any) -> None:
            self._progress_timer.stop()
            self.show_progress()
            callback(value)

        return call

    def cancel(self) -> None:
        """Ask the running job to stop at its next step; what it has written stays or is cleaned up by the job."""
        if self.cancel_token is not None and self.worker is not None:
            self.cancel_token.cancel()
            self.status.value = "cancelling..."

    def record_progress(self, done: int, total: int) -> None:
        """A job's progress callback (on its thread): remembered for the timer; raises JobCancelled after Cancel."""
        if self.cancel_token is not None and self.cancel_token.cancelled:
            raise JobCancelled()
        self._done_total = (done, total)

    def show_progress(self) -> None:
        """Show the last recorded progress on the job's progress bar, and on the status line with the time left
        at the rate so far (while the job runs)."""
        from napari_hires.engine.estimate import format_seconds

        if self._progress_bar is None:
            return
        done, total = self._done_total
        self._progress_bar.max = max(total, 1)
        self._progress_bar.value = min(done, total)
        if self._progress_timer.isActive() and 0 < done < total and not self.cancel_token.cancelled:
            left = (time.perf_counter() - self._job_started) / done * (total - done)
            self.status.value = f"{self._job_status} {done}/{total} · ~{format_seconds(left)} left"

    def on_error(self, err: Exception) -> None:
        """User errors go to the status line; anything else is a bug: shown and re-raised."""
        from napari_hires.widgets._status import report_error

        report_error(self.status, err)

    def _set_running(self, running: bool) -> None:
        start, cancel = self._job_buttons
        if start is not None:
            start.enabled = not running
        if cancel is not None:
            cancel.enabled = running

    def _job_finished(self) -> None:
        self.worker = None
        self._progress_timer.stop()
        self.show_progress()
        self._set_running(False)
        self.on_job_finished()

    def on_job_finished(self) -> None:
        """Called on the main thread once a job has ended, however it ended."""
