"""The "Build pyramid" dock widget: pick an image and an output path, build the OME-Zarr pyramid off the UI thread."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from qtpy.QtWidgets import QWidget

from napari_hires.widgets._base import DockWidget

_NO_SHARD = "none"


class PyramidBuilderWidget(DockWidget):
    """Form over :func:`napari_hires.io.pyramid_builder.build_pyramid`; the build runs in a napari thread worker."""

    def __init__(self, napari_viewer: Any = None) -> None:
        super().__init__(napari_viewer)
        self.source = FileEdit(label="input", mode="r", tooltip="TIFF/OME-TIFF/SVS, PNG, zarr or OME-Zarr")
        self.output = FileEdit(label="output", mode="w", filter="*.zarr", tooltip="output .zarr path")
        self.chunk = ComboBox(label="chunk", choices=[256, 512, 1024], value=512)
        self.shard = ComboBox(label="shard", choices=[_NO_SHARD, "2048", "4096"], value=_NO_SHARD,
                              tooltip="pixels per shard file (a multiple of chunk); none stores one file per chunk")
        self.kind = ComboBox(label="kind", choices=["auto", "image", "labels"], value="auto",
                             tooltip="labels use mode downsampling, images the mean")
        self.overwrite = CheckBox(label="overwrite", value=False)
        self.run_button = PushButton(text="Build pyramid")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self._form = Container(widgets=[self.source, self.output, self.chunk, self.shard, self.kind, self.overwrite,
                                        self.run_button, self.progress, self.status])
        self.set_content(self._form)
        self.job_buttons(self.run_button)
        self.run_button.changed.connect(self.start)

    def start(self) -> None:
        """Start the build in a thread worker; the form stays usable and shows progress and the outcome."""
        from napari_hires.io.pyramid_builder import build_pyramid

        if not str(self.source.value) or str(self.source.value) == "." or not str(self.output.value):
            self.status.value = "choose an input image and an output .zarr path"
            return
        shard = None if self.shard.value == _NO_SHARD else int(self.shard.value)
        self.run_job(build_pyramid, self.source.value, self.output.value, chunk=self.chunk.value, shard=shard,
                     kind=self.kind.value, overwrite=self.overwrite.value, progress=self.record_progress,
                     bar=self.progress, status="building...", returned=self._on_done)

    def _on_done(self, out: str) -> None:
        self.status.value = f"wrote {out}"


def build_pyramid_widget(napari_viewer: Any = None) -> QWidget:
    """npe2 widget contribution: the "Build pyramid" form."""
    return PyramidBuilderWidget(napari_viewer)
