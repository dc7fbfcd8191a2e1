"""The "Build pyramid" dock widget: pick an image and an output path, build the OME-Zarr pyramid off the UI thread."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_hires.widgets._status import report_error

_NO_SHARD = "none"


class PyramidBuilderWidget(QWidget):
    """Form over :func:`napari_hires.io.pyramid_builder.build_pyramid`; the build runs in a napari thread worker."""

    def __init__(self) -> None:
        super().__init__()
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
        layout = QVBoxLayout(self)
        layout.addWidget(self._form.native)
        layout.addStretch()
        self._done_total = (0, 1)
        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        self.worker: Any = None
        self.run_button.changed.connect(self.start)

    def start(self) -> None:
        """Start the build in a thread worker; the form stays usable and shows progress and the outcome."""
        from napari.qt.threading import create_worker

        from napari_hires.io.pyramid_builder import build_pyramid

        if not str(self.source.value) or str(self.source.value) == "." or not str(self.output.value):
            self.status.value = "choose an input image and an output .zarr path"
            return
        shard = None if self.shard.value == _NO_SHARD else int(self.shard.value)
        self._done_total = (0, 1)
        self.worker = create_worker(
            build_pyramid, self.source.value, self.output.value, chunk=self.chunk.value, shard=shard,
            kind=self.kind.value, overwrite=self.overwrite.value, progress=self._record_progress,
            _start_thread=False,
            _connect={"returned": self._on_done, "errored": self._on_error, "finished": self._on_finished},
        )
        self.run_button.enabled = False
        self.status.value = "building..."
        self._timer.start()
        self.worker.start()

    def _record_progress(self, done: int, total: int) -> None:
        self._done_total = (done, total)  # called from writer threads; the timer shows it on the UI thread

    def _show_progress(self) -> None:
        done, total = self._done_total
        self.progress.max = max(total, 1)
        self.progress.value = done

    def _on_done(self, out: str) -> None:
        self.status.value = f"wrote {out}"

    def _on_error(self, err: Exception) -> None:
        """User errors (bad input, existing output) go to the status line; anything else is a bug: re-raise it."""
        report_error(self.status, err)

    def _on_finished(self) -> None:
        self._timer.stop()
        self._show_progress()
        self.run_button.enabled = True


def build_pyramid_widget() -> QWidget:
    """npe2 widget contribution: the "Build pyramid" form."""
    return PyramidBuilderWidget()
