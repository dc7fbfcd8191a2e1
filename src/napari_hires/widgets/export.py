"""The "Export labels" dock widget: pick a Labels layer, a format and an output, export off the UI thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_hires.errors import HiresError
from napari_hires.widgets._status import report_error

_SUFFIX = {"ome-zarr": ".zarr", "tiff": ".tif", "geojson": ".geojson"}


class _Cancelled(Exception):
    """Raised from the progress callback to stop an export; the export then removes what it had written."""


class ExportLabelsWidget(QWidget):
    """Form over :func:`napari_hires.labels.export.export_labels`; the export runs in a napari thread worker."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.layer = ComboBox(label="labels", choices=self._labels_layer_names, tooltip="the Labels layer to export")
        self.format = ComboBox(label="format", choices=list(_SUFFIX), value="geojson",
                               tooltip="OME-Zarr labels, a pyramidal OME-TIFF, or GeoJSON polygons for QuPath")
        self.output = FileEdit(label="output", mode="w", tooltip="output .zarr, .tif or .geojson path")
        self.image = FileEdit(label="into image", mode="d",
                              tooltip="optional: add the labels to this OME-Zarr image's labels/ instead of output")
        self.name = LineEdit(label="name", value="labels", tooltip="name under the image's labels/")
        self.overwrite = CheckBox(label="overwrite", value=False)
        self.export_button = PushButton(text="Export")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self._form = Container(widgets=[self.layer, self.format, self.output, self.image, self.name, self.overwrite,
                                        self.export_button, self.cancel_button, self.progress, self.status])
        layout = QVBoxLayout(self)
        layout.addWidget(self._form.native)
        layout.addStretch()
        self._done_total = (0, 1)
        self._cancel = False
        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        self.worker: Any = None
        self.format.changed.connect(self._format_changed)
        self.export_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed,
                      napari_viewer.layers.events.moved):
            event.connect(self._refresh_layers)
        self._format_changed(self.format.value)

    # ------------------------------------------------------------------ form
    def _labels_layer_names(self, _widget: Any = None) -> list[str]:
        from napari.layers import Labels

        return [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _refresh_layers(self, _event: Any = None) -> None:
        self.layer.reset_choices()

    def _format_changed(self, fmt: str) -> None:
        """Show the image fields for OME-Zarr only, and give a chosen output the new format's suffix."""
        self.image.visible = self.name.visible = fmt == "ome-zarr"
        out = _chosen(self.output.value)
        if out is not None and out.suffix.lower() in (".zarr", ".tif", ".tiff", ".geojson"):
            self.output.value = out.with_suffix(_SUFFIX[fmt])

    # ------------------------------------------------------------------ export
    def start(self) -> None:
        """Export the chosen layer in a thread worker; the form shows progress and the outcome."""
        from napari.qt.threading import create_worker

        from napari_hires.labels.export import export_labels, labels_from_layer_data

        layer = next((lay for lay in self.viewer.layers if lay.name == self.layer.value), None)
        if layer is None:
            self.status.value = "add or open a Labels layer to export"
            return
        fmt = self.format.value
        out = _chosen(self.output.value)
        image = _chosen(self.image.value) if fmt == "ome-zarr" else None
        if image is not None:
            out = None
        if out is None and image is None:
            self.status.value = "choose an output path"
            return
        data, attributes, _ = layer.as_layer_data_tuple()
        try:
            labels = labels_from_layer_data(data, attributes)
        except HiresError as err:
            self.status.value = f"error: {err}"
            return
        self._done_total = (0, 1)
        self._cancel = False
        self.worker = create_worker(
            export_labels, labels, out, fmt, image=image, name=(self.name.value or None) if image else None,
            overwrite=self.overwrite.value, progress=self._record_progress,
            _start_thread=False,
            _connect={"returned": self._on_done, "errored": self._on_error, "finished": self._on_finished},
        )
        self.export_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"exporting {layer.name} as {fmt}..."
        self._timer.start()
        self.worker.start()

    def cancel(self) -> None:
        """Stop the export at its next block; nothing that looks whole is left behind."""
        self._cancel = True
        self.status.value = "cancelling..."

    def _record_progress(self, done: int, total: int) -> None:
        """Called on the export thread: remember progress for the timer, stop if cancelled."""
        if self._cancel:
            raise _Cancelled()
        self._done_total = (done, total)

    def _show_progress(self) -> None:
        done, total = self._done_total
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total)

    def _on_done(self, out: str) -> None:
        self.status.value = f"wrote {out}"

    def _on_error(self, err: Exception) -> None:
        """Cancel and user errors (bad input, existing output) go to the status line; anything else is re-raised."""
        if isinstance(err, _Cancelled):
            self.status.value = "cancelled; nothing was written"
            return
        report_error(self.status, err)

    def _on_finished(self) -> None:
        self._timer.stop()
        self._show_progress()
        self.export_button.enabled = True
        self.cancel_button.enabled = False


def _chosen(value: Any) -> Path | None:
    """A FileEdit's path, or None when nothing was chosen (magicgui shows an empty field as ".")."""
    text = str(value or "")
    return Path(text) if text and text != "." else None
