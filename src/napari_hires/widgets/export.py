"""The "Export labels" dock widget: pick a Labels layer, a format and an output, export off the UI thread."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton

from napari_hires.errors import HiresError
from napari_hires.widgets._base import DockWidget, JobCancelled, chosen_path
from napari_hires.widgets._status import report_error

_SUFFIX = {"ome-zarr": ".zarr", "tiff": ".tif", "geojson": ".geojson"}


class ExportLabelsWidget(DockWidget):
    """Form over :func:`napari_hires.labels.export.export_labels`; the export runs in a napari thread worker."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        from napari.layers import Labels

        self.layer = self.layer_choice("labels", Labels, names=True, tooltip="the Labels layer to export")
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
        self.set_content(self._form)
        self.job_buttons(self.export_button, self.cancel_button)
        self.format.changed.connect(self._format_changed)
        self.export_button.changed.connect(self.start)
        self._format_changed(self.format.value)

    # ------------------------------------------------------------------ form
    def _format_changed(self, fmt: str) -> None:
        """Show the image fields for OME-Zarr only, and give a chosen output the new format's suffix."""
        self.image.visible = self.name.visible = fmt == "ome-zarr"
        out = chosen_path(self.output.value)
        if out is not None and out.suffix.lower() in (".zarr", ".tif", ".tiff", ".geojson"):
            self.output.value = out.with_suffix(_SUFFIX[fmt])

    # ------------------------------------------------------------------ export
    def start(self) -> None:
        """Export the chosen layer in a thread worker; the form shows progress and the outcome."""
        from napari_hires.labels.export import export_labels, labels_from_layer_data

        layer = next((lay for lay in self.viewer.layers if lay.name == self.layer.value), None)
        if layer is None:
            self.status.value = "add or open a Labels layer to export"
            return
        fmt = self.format.value
        out = chosen_path(self.output.value)
        image = chosen_path(self.image.value) if fmt == "ome-zarr" else None
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
        self.run_job(export_labels, labels, out, fmt, image=image, name=(self.name.value or None) if image else None,
                     overwrite=self.overwrite.value, progress=self.record_progress, bar=self.progress,
                     status=f"exporting {layer.name} as {fmt}...", returned=self._on_done, errored=self._on_error)

    def _on_done(self, out: str) -> None:
        self.status.value = f"wrote {out}"

    def _on_error(self, err: Exception) -> None:
        """Cancel and user errors (bad input, existing output) go to the status line; anything else is re-raised."""
        if isinstance(err, JobCancelled):
            self.status.value = "cancelled; nothing was written"
            return
        report_error(self.status, err)
