"""The "Build pyramid" dock widget: pick an image (the open one's file is offered) and an output path, build the
OME-Zarr pyramid off the UI thread with the time left, and open the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from qtpy.QtWidgets import QWidget

from napari_hires.widgets import _layers
from napari_hires.widgets._base import DockWidget

_NO_SHARD = "none"


class PyramidBuilderWidget(DockWidget):
    """Form over :func:`napari_hires.io.pyramid_builder.build_pyramid`; the build runs in a napari thread worker."""

    def __init__(self, napari_viewer: Any = None) -> None:
        super().__init__(napari_viewer)
        self.source = FileEdit(label="input", mode="r", tooltip="TIFF/OME-TIFF/SVS, PNG, zarr or OME-Zarr")
        self.output_choice("output", "*.zarr", "output .zarr path")
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
        self._source_auto = True
        self.source.changed.connect(self._on_source_edited)
        self._offer_open_image()

    def refresh_layer_choices(self, _event: Any = None) -> None:
        super().refresh_layer_choices(_event)
        self._offer_open_image()

    def _on_source_edited(self, _value: Any = None) -> None:
        self._source_auto = False

    def _offer_open_image(self) -> None:
        """Until the user picks an input, propose the file of the selected (else the first) open image layer, and
        a .zarr beside it."""
        from napari.layers import Image

        if self.viewer is None or not self._source_auto:
            return
        layers = [self.viewer.layers.selection.active, *self.viewer.layers]
        path = next((src for ly in layers if isinstance(ly, Image) and (src := _layers.layer_source(ly))), None)
        if path is None:
            return
        with self.source.changed.blocked():
            self.source.value = path
        if self._output_auto:
            source = Path(path)
            self.set_auto_output(source.with_name(source.stem + ("-pyramid" if source.suffix == ".zarr" else "")
                                                  + ".zarr"))

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
        """Say where the pyramid went and open it (in place of a layer already showing that store)."""
        self.status.value = f"wrote {out}"
        if self.viewer is not None:
            for old in [ly for ly in self.viewer.layers if ly.metadata.get("source") == str(out)]:
                self.viewer.layers.remove(old)
            self.viewer.open(str(out), plugin="napari-hires")


def build_pyramid_widget(napari_viewer: Any = None) -> QWidget:
    """npe2 widget contribution: the "Build pyramid" form."""
    return PyramidBuilderWidget(napari_viewer)
