"""The "Fine-tune" dock widget: train a model on corrected labels (or a denoiser on the image itself), then predict.

Training reads the chosen region of the image (and of the labels layer, placed by its translate, so an editing
window of the "Correct labels" widget works as well as a whole prediction store) into memory and calls the Qt-free
:mod:`napari_hires.training` jobs in a napari generator worker that yields every step, so the loss curve grows live.
Cancel stops between two steps and writes no model file; the file is written only when training finishes.
"Predict again" runs the trained model over the chosen region through the engine into a new store and shows it.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generator

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

from napari_hires.errors import HiresError
from napari_hires.widgets import _layers
from napari_hires.widgets._base import MODEL_FILE, MODEL_FILE_FILTER, DockWidget, free_path, model_choices
from napari_hires.widgets._status import USER_ERRORS, message_rows, report_error

MODES = ("fine-tune segmentation", "self-supervised restoration (no labels needed)")
REGIONS = ("visible region", "Shapes rectangle", "extent of the labels layer (editing window)")
#: What 0 means in the labels: decided from them (as the API's ``zero_is_unlabelled=None``), or chosen.
ZERO_CHOICES = [("decide (refuse scribbles)", "auto"), ("0 means unlabelled (scribbles)", True),
                ("0 is a class", False)]
NEW_DENOISER = "new small MAXIM"


class LossCurve(QWidget):
    """A small live plot of the loss per step: a polyline scaled to the widget, with the first and last loss."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[float] = []
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def add_point(self, loss: float) -> None:
        """Append one step's loss and repaint."""
        self.points.append(float(loss))
        self.update()

    def clear(self) -> None:
        """Forget the curve (a new run starts)."""
        self.points = []
        self.update()

    def paintEvent(self, _event: Any) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(30, 30, 30))
        finite = [p for p in self.points if math.isfinite(p)]
        if finite:
            margin, w, h = 6, self.width(), self.height()
            lo, hi = min(finite), max(finite)
            span = (hi - lo) or 1.0
            n = max(len(self.points) - 1, 1)
            line = QPolygonF([QPointF(margin + i / n * (w - 2 * margin),
                                      h - margin - (p - lo) / span * (h - 2 * margin))
                              for i, p in enumerate(self.points) if math.isfinite(p)])
            painter.setPen(QPen(QColor(255, 170, 0), 1.5))
            painter.drawPolyline(line)
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(self.rect().adjusted(margin, 2, -margin, -2),
                             Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignRight,
                             f"step {len(self.points)}  loss {self.points[-1]:.4f}  (first {self.points[0]:.4f})")
        painter.end()


@dataclass
class TrainRequest:
    """Everything one training run needs, taken from the form on the main thread."""

    mode: str
    image: Any  # level-0 array of the image layer
    labels: Any  # level-0 array of the labels layer (None in self-supervised mode)
    offset: tuple[int, int]  # the labels layer's level-0 origin in image pixels
    region: _layers.Region  # image pixels
    model: Any  # registry name, model file path, or None (a new small MAXIM)
    out: str
    overwrite: bool
    zero_is_unlabelled: bool | None  # None: decided from the labels (scribble-like ones refused)
    settings: Any  # TrainSettings
    cancel: Any = None  # the engine's CancelToken
    encoder: str | None = None  # a model file or published checkpoint whose backbone the architecture starts from


def labels_offset(labels: Any, image: Any) -> tuple[int, int]:
    """Where a labels layer's pixel (0, 0) lies in the image layer's pixels; both must share the pixel size."""
    ls, isc = np.asarray(labels.scale[-2:], float), np.asarray(image.scale[-2:], float)
    if not np.allclose(ls, isc, rtol=1e-6):
        raise HiresError(f"labels {labels.name!r} (pixel size {tuple(ls)}) and image {image.name!r} (pixel size "
                         f"{tuple(isc)}) differ in resolution; choose the labels drawn on this image")
    offset = (np.asarray(labels.translate[-2:], float) - np.asarray(image.translate[-2:], float)) / isc
    rounded = np.round(offset)
    if not np.allclose(offset, rounded, atol=1e-3):
        raise HiresError(f"labels {labels.name!r} are not aligned with the pixels of {image.name!r}; "
                         "choose the labels drawn on this image")
    return int(rounded[0]), int(rounded[1])


def labels_extent(labels: Any, image: Any) -> _layers.Region:
    """The image pixels a labels layer covers, clipped to the image."""
    dy, dx = labels_offset(labels, image)
    lh, lw = _layers.level0(labels).shape[-2:]
    h, w = _layers.level0_shape(image)
    region = (max(0, dy), min(h, dy + lh), max(0, dx), min(w, dx + lw))
    if region[0] >= region[1] or region[2] >= region[3]:
        raise HiresError(f"labels {labels.name!r} do not overlap image {image.name!r}; choose the labels drawn on it")
    return region


def predicted_region(labels: Any, image: Any) -> _layers.Region | None:
    """The image pixels a prediction store behind ``labels`` was predicted over (the region of its run record),
    or None for labels that are no such store or were predicted over the whole image."""
    from napari_hires.io.build_state import RUN_RECORD, store_marker

    source = _layers.layer_source(labels)
    found = store_marker(source) if source else None
    region = (found[1].get(RUN_RECORD) or {}).get("region") if found else None
    if not region:
        return None
    dy, dx = labels_offset(labels, image)
    y0, y1, x0, x1 = (int(v) for v in region)
    return y0 + dy, y1 + dy, x0 + dx, x1 + dx


def _overlap(a: _layers.Region, b: _layers.Region) -> _layers.Region | None:
    """The pixels two regions share, or None."""
    region = (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]))
    return region if region[0] < region[1] and region[2] < region[3] else None


def read_training_data(request: TrainRequest) -> tuple[np.ndarray, np.ndarray | None]:
    """The region's image pixels and labels in memory (off the UI thread): what the training jobs train on."""
    from napari_hires.training.sampling import MAX_REGION_PIXELS

    y0, y1, x0, x1 = request.region
    if (y1 - y0) * (x1 - x0) > MAX_REGION_PIXELS:
        raise HiresError(f"the region {y1 - y0} x {x1 - x0} px is too large to train on at once; zoom in, draw a "
                         "smaller rectangle, or train on the editing window")
    image = np.asarray(request.image[y0:y1, x0:x1])
    if request.labels is None:
        return image, None
    dy, dx = request.offset
    return image, np.asarray(request.labels[y0 - dy:y1 - dy, x0 - dx:x1 - dx])


def train_steps(request: TrainRequest) -> Generator[Any, None, Any]:
    """A training run as the generator a napari worker drives (no thread of its own): reads the region, then yields
    each step's StepInfo; returns the TrainingJob (model file written only when not cancelled)."""
    from napari_hires.training import fine_tune_steps, self_supervised_steps

    image, labels = read_training_data(request)
    model = request.model
    if request.encoder:  # loaded here, off the UI thread, like the model itself
        from napari_hires.models import create_model

        model = create_model(request.model, encoder=request.encoder)
    if labels is None:
        return (yield from self_supervised_steps(image, request.model, request.out, settings=request.settings,
                                                 cancel=request.cancel, overwrite=request.overwrite))
    return (yield from fine_tune_steps(image, labels, model, request.out,
                                       zero_is_unlabelled=request.zero_is_unlabelled, settings=request.settings,
                                       cancel=request.cancel, overwrite=request.overwrite))


def predict_region(image: Any, model: Any, out: str, region: _layers.Region, device: str, cancel: Any = None) -> Any:
    """Run ``model`` over ``region`` of ``image`` into a new store ``out`` (off the UI thread) until ``cancel``;
    returns the PredictionResult."""
    from napari_hires.engine import predict

    return predict(image, model, out, region=region, device=device, cancel=cancel)


def _model_file_taken(path: Path) -> bool:
    from napari_hires.models.files import _paths

    return any(p.exists() for p in _paths(path))


class TrainWidget(DockWidget):
    """Choose image, labels, region, model and budget; Train with a live loss curve; Cancel; Predict again."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        from napari.layers import Image, Labels, Shapes

        from napari_hires.models import list_models
        from napari_hires.training import TrainSettings

        self._names = {task: list_models(task=task, aliases=False) for task in ("segmentation", "restoration")}
        self.mode = ComboBox(label="mode", choices=list(MODES), value=MODES[0])
        self.image = self.layer_choice("image", Image, nullable=True)
        self.labels = self.layer_choice("labels", Labels, nullable=True,
                                        tooltip="corrected labels: a prediction store, an editing window or any "
                                                "Labels layer")
        self.zero_unlabelled = ComboBox(label="0 in the labels", choices=ZERO_CHOICES, value="auto",
                                        tooltip="0 means unlabelled: label v is class v-1 and 0 is not trained on; "
                                                "decided from the labels, scribble-like ones are refused")
        self.region = ComboBox(label="region", choices=list(REGIONS), value=REGIONS[0])
        self.shapes = self.layer_choice("rectangle", Shapes, nullable=True, visible=False,
                                        tooltip="the selected (else the first) shape of this Shapes layer")
        self.model_section(self._model_choices())
        self.encoder = FileEdit(label="encoder", mode="r", filter=MODEL_FILE_FILTER, visible=False,
                                tooltip="optional: start this untrained architecture from the backbone of a model "
                                        "file or published checkpoint of its family (e.g. timm MaxViT weights); the "
                                        "encoder trains at a tenth of the learning rate")
        defaults = TrainSettings()  # the form starts where the API and the CLI do
        self.steps = SpinBox(label="steps", min=1, max=100_000, value=defaults.steps,
                             tooltip="the most steps: training stops earlier once the held-out score stops rising")
        self.lr = FloatSpinBox(label="learning rate", min=1e-6, max=1.0, step=1e-4, value=defaults.lr)
        self.lr.native.setDecimals(6)
        self.batch = SpinBox(label="batch", min=1, max=256, value=defaults.batch)
        self.tile = SpinBox(label="tile", min=16, max=2048, step=16, value=defaults.tile)
        self.device = self.device_choice()
        self.output_choice("save model to", "*.safetensors",
                           "NAME.safetensors with its NAME.json card, written when training finishes")
        self.overwrite = CheckBox(label="overwrite", value=False)
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.predict_button = PushButton(text="Predict again", enabled=False,
                                         tooltip="run the trained model over the chosen region into a new store")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self.curve = LossCurve()
        self._form = Container(widgets=[
            self.mode, self.image, self.labels, self.zero_unlabelled, self.region, self.shapes, self.model,
            self.model_file, self.encoder, self.steps, self.lr, self.batch, self.tile, self.device, self.output, self.overwrite,
            Container(widgets=[self.train_button, self.cancel_button, self.predict_button], layout="horizontal",
                      labels=False),
            self.progress,
        ])
        self.set_content(self._form, message_rows(self.status), self.curve)
        self.job_buttons(self.train_button, self.cancel_button)

        self.job: Any = None  # the last finished TrainingJob
        self._trained_on: Any = None  # the image layer the job was trained on
        self.result_layers: list[Any] = []

        self.mode.changed.connect(self._on_mode)
        self.region.changed.connect(self._on_region)
        self.model.changed.connect(self._on_model)
        self.image.changed.connect(self._auto_output)
        self.train_button.changed.connect(self.start)
        self.predict_button.changed.connect(self.predict_again)
        self._on_mode()

    # ------------------------------------------------------------------ choices
    def _self_supervised(self) -> bool:
        return self.mode.value == MODES[1]

    def _model_choices(self) -> list[tuple[str, str]]:
        """Trained models first (what they were trained on), untrained ones marked; a new denoiser first when
        self-supervised."""
        if self._self_supervised():
            return [(NEW_DENOISER, NEW_DENOISER), *model_choices(self._names["restoration"])]
        return model_choices(self._names["segmentation"])

    def _on_mode(self, _value: Any = None) -> None:
        ss = self._self_supervised()
        self.labels.visible = self.zero_unlabelled.visible = not ss
        choices = self._model_choices()
        self.model.choices = choices
        self.model.value = choices[0][1]  # magicgui keeps a shared choice (model file...) selected and first
        self._on_region()
        self._on_model()

    def _on_region(self, _value: Any = None) -> None:
        self.shapes.visible = self.region.value == REGIONS[1]

    def _on_model(self, _value: Any = None) -> None:
        self.encoder.visible = self._takes_encoder()
        self._auto_output()

    def _takes_encoder(self) -> bool:
        """Whether the chosen model is an untrained architecture being fine-tuned, which an encoder can start."""
        from napari_hires.models import model_entry

        if self._self_supervised() or self.model.value in (MODEL_FILE, NEW_DENOISER):
            return False
        return not model_entry(str(self.model.value)).trained

    def _encoder_choice(self) -> str | None:
        """The encoder file, when one is given for an architecture that takes it; checked to exist."""
        path = str(self.encoder.value)
        if not self._takes_encoder() or path in ("", "."):
            return None
        if not Path(path).exists():
            raise HiresError(f"encoder {path!r} does not exist: choose a model file or published checkpoint")
        return path

    def _auto_output(self, _value: Any = None) -> None:
        """``<image>-<model>-tuned`` in the image's folder, else a temporary one; the next free name."""
        layer = self.image.value
        if not self._output_auto or layer is None:
            return
        source = _layers.layer_source(layer)
        folder = Path(source).parent if source else Path(tempfile.gettempdir()) / "napari-hires" / "models"
        base = "denoiser" if self.model.value == NEW_DENOISER else self.model_stem()
        suffix = "denoised" if self._self_supervised() else "tuned"
        self.set_auto_output(free_path(folder, f"{layer.name}-{base}-{suffix}", ".safetensors", _model_file_taken))

    # ------------------------------------------------------------------ the form
    def chosen_region(self, image: Any, labels: Any = None) -> _layers.Region:
        """The region to train on (or predict) in image pixels; a clear error when it is empty or missing."""
        if self.region.value in REGIONS[:2]:
            region = self.view_or_rectangle(image, rectangle=self.region.value == REGIONS[1])
        else:
            if labels is None:
                raise HiresError("the labels extent needs a labels layer: choose one, or another region")
            return labels_extent(labels, image)
        if labels is not None:
            region = _overlap(region, labels_extent(labels, image))
            if region is None:
                raise HiresError(f"the region holds none of the labels {labels.name!r}: move it over them")
            predicted = predicted_region(labels, image)
            if predicted is not None:  # outside it the store's 0 means "never predicted", not a class
                region = _overlap(region, predicted)
                if region is None:
                    raise HiresError(f"the region holds none of the pixels the model predicted in {labels.name!r}: "
                                     "move it over the predicted part")
        return region

    def _model_choice(self) -> Any:
        return None if self.model.value == NEW_DENOISER else self.chosen_model()

    def request(self) -> TrainRequest:
        """The form's values, checked; raises HiresError saying what to fix."""
        from napari_hires.training import TrainSettings

        image = self.image.value
        if image is None:
            raise HiresError("no image layer: open an image and choose it")
        _layers.check_plane(image)
        labels = None
        if not self._self_supervised():
            labels = self.labels.value
            if labels is None:
                raise HiresError("no labels layer: run a model or paint labels, then choose them (or switch to "
                                 "self-supervised restoration, which needs none)")
        out = str(self.output.value)
        if out in ("", "."):
            raise HiresError("choose where to save the trained model")
        settings = TrainSettings(steps=self.steps.value, lr=self.lr.value, batch=self.batch.value,
                                 tile=self.tile.value, device=self.device.value)
        return TrainRequest(
            mode=self.mode.value, image=_layers.level0(image),
            labels=None if labels is None else _layers.level0(labels),
            offset=(0, 0) if labels is None else labels_offset(labels, image),
            region=self.chosen_region(image, labels), model=self._model_choice(), out=out,
            overwrite=self.overwrite.value, settings=settings, encoder=self._encoder_choice(),
            zero_is_unlabelled=None if self.zero_unlabelled.value == "auto" else self.zero_unlabelled.value,
        )

    # ------------------------------------------------------------------ training
    def start(self) -> None:
        """Train with the form's settings in a generator worker that yields each step."""
        from napari_hires.engine import CancelToken

        if self.worker is not None:
            return
        try:
            request = self.request()
        except HiresError as err:
            self.status.value = f"error: {err}"
            return
        request.cancel = CancelToken()  # Cancel stops between two steps; no model file is written
        self.job, self._trained_on = None, self.image.value
        self.curve.clear()
        self.progress.max, self.progress.value = request.settings.steps, 0
        self.run_job(train_steps, request, token=request.cancel, status="reading the region...",
                     yielded=self._on_step, returned=self._on_trained, errored=self._on_error)

    def _on_step(self, step: Any) -> None:
        from napari_hires.training.loop import held_out_progress

        self.curve.add_point(step.loss)
        self.progress.value = step.step
        if not (self.cancel_token and self.cancel_token.cancelled):
            score = "" if step.held_out is None else f" · {held_out_progress(step.held_out)}"
            self.status.value = f"step {step.step}/{step.steps} · loss {step.loss:.4f} · {step.seconds:.0f} s{score}"

    def _on_trained(self, job: Any) -> None:
        from napari_hires.training.sampling import convention_note

        result = job.result
        if result.cancelled:
            self.status.value = f"cancelled after {result.steps_done} steps; no model file written"
            return
        self.job = job
        self._output_auto = True
        note = "" if job.zero_is_unlabelled is None else f"; {convention_note(job.zero_is_unlabelled)}"
        self.status.value = (f"trained {result.steps_done} steps in {result.seconds:.1f} s on {result.device}; "
                             f"saved {job.path}{note}{job.notes}")

    def _on_error(self, err: Exception) -> None:
        report_error(self.status, err, (*USER_ERRORS, ValueError))

    def on_job_finished(self) -> None:
        if self.job is not None:
            self._auto_output()  # the next run must not meet this file

    def _set_running(self, running: bool) -> None:
        super()._set_running(running)
        self.predict_button.enabled = not running and self.job is not None

    # ------------------------------------------------------------------ predict again
    def predict_again(self) -> None:
        """Run the trained model over the chosen region of the image it was trained on into a new store."""
        if self.job is None or self.worker is not None:
            return
        layer = self._trained_on
        if layer not in self.viewer.layers:
            self.status.value = "error: the image the model was trained on is no longer open"
            return
        try:
            region = self.chosen_region(layer)
        except HiresError as err:
            self.status.value = f"error: {err}"
            return
        path = Path(self.job.path)
        out = free_path(path.parent, f"{path.stem}-prediction", ".zarr", Path.exists)
        from napari_hires.engine import CancelToken

        token, model, device = CancelToken(), self.job.model, self.device.value
        self.run_job(lambda: predict_region(_layers.engine_input(layer), model, str(out), region, device, token),
                     token=token, status=f"predicting {region} with the trained model into {out}...",
                     returned=self._on_predicted, errored=self._on_error)

    def _on_predicted(self, result: Any) -> None:
        from napari_hires.io.readers import open_image

        out = result.path
        if result.cancelled:
            self.status.value = f"cancelled: {out} holds part of the prediction"
            return
        layer = self._trained_on
        self.result_layers = []
        for data, meta, kind in open_image(out).layer_data():
            meta.update(scale=list(layer.scale[-2:]), translate=list(layer.translate[-2:]),
                        name=f"{meta.get('name') or Path(out).stem} (fine-tuned)")
            added = getattr(self.viewer, f"add_{kind}")(data, **meta)
            self.result_layers.extend(added if isinstance(added, list) else [added])
        self.status.value = f"predicted with the trained model → {out}"
