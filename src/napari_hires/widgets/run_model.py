"""The "Run model" dock widget: a model over an image layer (all of it, the view, or a rectangle) into a zarr store.

The run goes through the engine block by block in a napari generator worker: planning creates the output store,
whose arrays are shown at once as multiscale layers (napari's cache off), and every written block (with its coarser
levels, ``live_pyramid``) reaches the main thread as a yielded event; a timer refreshes the layers and the progress
at most a few times a second, so the main thread only ever slices what is on screen. Cancel sets the engine's
CancelToken; running again with the same settings resumes, as the engine skips the blocks its journal lists.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Generator

from magicgui.widgets import CheckBox, ComboBox, Container, Label, ProgressBar, PushButton, SpinBox
from qtpy.QtCore import QTimer

from napari_hires.errors import HiresError
from napari_hires.widgets import _layers
from napari_hires.widgets._base import MODEL_FILE, DockWidget, free_path, model_choices, synthetic_note
from napari_hires.widgets._status import USER_ERRORS, message_rows, report_error

SCOPES = ("whole image", "visible region", "Shapes rectangle")
REFRESH_MS = 250  # layer and progress refresh while running
ESTIMATE_DEBOUNCE_MS = 400
#: Parameter counts of the models built so far in this process (building every model just to label it is slow).
_sizes: dict[str, int] = {}


def registry_model(name: str) -> Any:
    """A registered model by :func:`create_model` (the same name always gives the same weights), its parameter count
    noted for the list."""
    from napari_hires.models import count_parameters, create_model

    model = create_model(name)
    _sizes[name] = count_parameters(model)
    return model


def run_steps(image: Any, model: Any, out: str, options: Any, *, region: _layers.Region | None, overwrite: bool,
              cancel: Any) -> Generator[Any, None, Any]:
    """The engine's run as the generator a napari worker drives (no thread of its own): yields Planned, then
    BlockWritten per block and Finishing; returns the PredictionResult. ``options``: a RunOptions."""
    from napari_hires.engine import run_prediction

    return run_prediction(image, model, out, options, region=region, overwrite=overwrite, cancel=cancel)


class RunModelWidget(DockWidget):
    """Choose image, model, scope, device and tiling; see the estimate; Run, Cancel, resume; watch it fill in."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        from napari.layers import Image, Shapes

        from napari_hires.engine.device import PRECISIONS
        from napari_hires.models import list_models, model_entry

        self._entries = {name: model_entry(name) for name in list_models(aliases=False)}
        self.image = self.layer_choice("image", Image, nullable=True)
        self.model_section(self._model_choices(), value=self._default_model())
        self.scope = ComboBox(label="scope", choices=list(SCOPES), value=SCOPES[0])
        self.shapes = self.layer_choice("rectangle", Shapes, nullable=True, visible=False,
                                        tooltip="the selected (else the first) shape of this Shapes layer")
        self.device = self.device_choice()
        self.precision = ComboBox(label="precision", choices=list(PRECISIONS), value="auto")
        self.tile = SpinBox(label="tile (0 = auto)", min=0, max=16384, step=32, value=0)
        self.overlap = SpinBox(label="overlap (0 = auto)", min=0, max=8192, value=0)
        self.batch = SpinBox(label="batch (0 = auto)", min=0, max=512, value=0)
        self.auto = Label(label="auto", value="")
        self.estimate = Label(label="estimate", value="")
        self.output_choice("output", "*.zarr", "the prediction's .zarr store")
        self.overwrite = CheckBox(label="overwrite", value=False,
                                  tooltip="replace an existing store at the output instead of resuming or refusing")
        self.resume = Label(label="resume", value="")
        self.resolution = Label(label="resolution", value="")  # the level run on for the model's pixel size
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(min=0, max=1, value=0)
        self.status = Label(label="status", value="")
        self._form = Container(widgets=[
            self.image, self.model, self.model_file, self.scope, self.shapes, self.device, self.precision,
            self.tile, self.overlap, self.batch, self.output, self.overwrite,
        ])
        self._run_row = Container(widgets=[self.run_button, self.cancel_button, self.progress], layout="horizontal",
                                  labels=False)
        self.reuse_button = PushButton(text="Reuse", tooltip="show the finished prediction; nothing is recomputed")
        self.overwrite_button = PushButton(text="Overwrite", tooltip="write the prediction into this store again")
        self.new_button = PushButton(text="New store", tooltip="write into the next free name beside this store")
        self.finished = Container(widgets=[self.reuse_button, self.overwrite_button, self.new_button],
                                  layout="horizontal", labels=False, visible=False)
        self.set_content(self._form, message_rows(self.auto, self.estimate, self.resume), self._run_row,
                         self.finished, message_rows(self.resolution, self.status))
        self.job_buttons(self.run_button, self.cancel_button)

        self._models: dict[str, Any] = {}
        self._model_lock = threading.Lock()
        self._blocks_in_scope: int | None = None
        self.estimate_worker: Any = None
        self._estimate_again = False
        self._run_layer: Any = None
        self._run_settings: dict[str, Any] = {}
        self.result: Any = None
        self.result_layers: list[Any] = []
        self._progress_state: tuple[int, int] | None = None
        self._run_started = 0.0
        self._done_at_start = 0
        self._pixels_written = 0  # output pixels of the blocks this run wrote, for the live rate
        self._dirty = False

        self._estimate_timer = QTimer(self)
        self._estimate_timer.setSingleShot(True)
        self._estimate_timer.setInterval(ESTIMATE_DEBOUNCE_MS)
        self._estimate_timer.timeout.connect(self._start_estimate)
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh)

        for w in (self.image, self.model, self.model_file):
            w.changed.connect(self._on_input_changed)
        for w in (self.scope, self.shapes, self.device, self.precision, self.tile, self.overlap, self.batch):
            w.changed.connect(self._settings_changed)
        self.run_button.changed.connect(lambda: self.start())
        for answer, button in (("reuse", self.reuse_button), ("overwrite", self.overwrite_button),
                               ("new", self.new_button)):
            button.changed.connect(lambda _v=None, answer=answer: self.start(answer))
        camera = _layers.camera(self.viewer)
        camera.events.center.connect(self._on_camera)
        camera.events.zoom.connect(self._on_camera)
        self._on_input_changed()
        _layers.warm_layer_imports()

    # ------------------------------------------------------------------ choices
    def _model_choices(self) -> list[tuple[str, str]]:
        """Trained models first (what they were trained on), untrained ones marked; each with its size: published
        (paper-sized) or small, and its parameters once built."""
        def size(name: str) -> str:
            text = "published" if self._entries[name].published else "small"
            return text + (f", {_sizes[name] / 1e6:.2f}M params" if name in _sizes else "")

        return model_choices(self._entries, size)

    def _show_sizes(self) -> None:
        """Relabel the model list with the parameter counts learnt so far (the value stays)."""
        choices = self._model_choices()
        shown = [self.model.native.itemText(i) for i in range(self.model.native.count())]
        if [label for label, _ in choices] != shown:
            value = self.model.value
            with self.model.changed.blocked():
                self.model.choices = choices
                self.model.value = value

    def _default_model(self) -> str:
        for name in ("hct_tiny_seg.synthetic", "hct_tiny_seg", *self._entries):  # trained demo weights first
            if name in self._entries:
                return name
        return MODEL_FILE

    # ------------------------------------------------------------------ reacting to the form
    def _on_camera(self, _event: Any = None) -> None:
        if self.scope.value == SCOPES[1]:
            self._schedule_estimate()

    def _on_input_changed(self, _value: Any = None) -> None:
        if self._output_auto:
            self.set_auto_output(self._auto_output())
        self._settings_changed()

    def _settings_changed(self, _value: Any = None) -> None:
        self.shapes.visible = self.scope.value == SCOPES[2]
        self._schedule_estimate()

    def on_output_changed(self) -> None:
        self._show_resume()

    def _auto_output(self) -> Path | None:
        """``<image>-<model>.zarr`` next to the image's file, else in the temporary folder (the next free name where
        something that is not a store of ours is in the way; Run asks before reusing a finished one)."""
        from napari_hires.io.build_state import store_marker

        layer = self.image.value
        if layer is None:
            return None
        source = _layers.layer_source(layer)
        folder = Path(source).parent if source else Path(tempfile.gettempdir()) / "napari-hires"
        return free_path(folder, f"{layer.name}-{self.model_stem()}", ".zarr",
                         lambda path: path.exists() and store_marker(path) is None)

    def _show_resume(self) -> None:
        from napari_hires.engine.estimate import stored_progress

        state = stored_progress(str(self.output.value)) if str(self.output.value) not in ("", ".") else None
        if state is None:
            self.resume.value = ""
            return
        done = state[0]
        total = self._blocks_in_scope if self._blocks_in_scope is not None else state[1]
        self.resume.value = f"resumable: {done} of {total} blocks done (Run resumes with the same settings)"

    # ------------------------------------------------------------------ settings
    def _settings(self) -> dict[str, Any]:
        """The form's values, checked; raises HiresError with what to fix."""
        layer = self.image.value
        if layer is None:
            raise HiresError("no image layer: open an image (or File > Open Sample > napari-hires) and choose it")
        _layers.check_plane(layer)
        self.chosen_model()  # a missing model file says so
        region = self._region(layer)
        from napari_hires.engine.options import RunOptions

        options = RunOptions(tile=self.tile.value or None, overlap=self.overlap.value or None,
                             batch=self.batch.value or None, device=self.device.value,
                             precision=self.precision.value, live_pyramid=True)
        return dict(layer=layer, model=self.model.value, model_file=str(self.model_file.value), region=region,
                    options=options)

    def _region(self, layer: Any) -> _layers.Region | None:
        if self.scope.value == SCOPES[0]:
            return None
        return self.view_or_rectangle(layer, rectangle=self.scope.value == SCOPES[2])

    def load_model(self, choice: str, model_file: str) -> Any:
        """The chosen model, built (or read) once per name or file and kept for later runs and estimates."""
        key = choice if choice != MODEL_FILE else f"{model_file}:{os.path.getmtime(model_file)}"
        with self._model_lock:
            if key not in self._models:
                from napari_hires.models import create_model

                self._models[key] = create_model(model_file) if choice == MODEL_FILE else registry_model(choice)
            return self._models[key]

    # ------------------------------------------------------------------ estimate
    def _schedule_estimate(self) -> None:
        self._estimate_timer.start()

    def _start_estimate(self) -> None:
        """Measure (off the UI thread) what the current settings cost; one estimate at a time, none during a run."""
        from napari.qt.threading import create_worker

        if self.worker is not None or self.estimate_worker is not None:
            self._estimate_again = True
            return
        try:
            settings = self._settings()
        except HiresError as err:
            self.estimate.value = f"({err})"
            return
        layer = settings["layer"]
        self.estimate.value = "measuring the model on one tile..."
        self._estimate_again = False
        self.estimate_worker = create_worker(
            self._estimate_job, settings, _layers.level0_shape(layer), _layers.level0(layer).dtype,
            _connect={"returned": self._on_estimate, "errored": self._on_estimate_error,
                      "finished": self._on_estimate_finished},
        )

    def _estimate_job(self, settings: dict, shape: tuple[int, int], dtype: Any) -> tuple[Any, str]:
        from napari_hires.engine.estimate import estimate_run
        from napari_hires.engine.options import RunOptions

        net = self.load_model(settings["model"], settings["model_file"])
        options = settings["options"]
        est = estimate_run(shape, dtype, net, options, region=settings["region"])
        auto = RunOptions(device=options.device).resolved(net)
        text = (f"tile {auto.layout.tile}, overlap {auto.layout.overlap}, batch {auto.batch}"
                f" · {net.task}, {sum(p.numel() for p in net.parameters()) / 1e6:.2f}M params")
        return est, text

    def _on_estimate(self, result: tuple[Any, str]) -> None:
        est, auto = result
        self.estimate.value = est.describe()
        self.auto.value = auto
        self._show_sizes()
        self._blocks_in_scope = est.geometry.blocks
        self._show_resume()

    def _on_estimate_error(self, err: Exception) -> None:
        self.estimate.value = f"(cannot estimate: {err})"
        if not isinstance(err, (HiresError, ValueError, FileNotFoundError)):
            raise err

    def _on_estimate_finished(self) -> None:
        self.estimate_worker = None
        if self._estimate_again:
            self._schedule_estimate()

    # ------------------------------------------------------------------ running
    def start(self, answer: str | None = None) -> None:
        """Run (or resume) the model with the form's settings in a thread worker; on an output holding a finished
        prediction, first ask whether to reuse it, overwrite it or write a new store (``answer``)."""
        from napari_hires.engine import CancelToken
        from napari_hires.io.build_state import store_marker

        if self.worker is not None:
            return
        self.finished.visible = False
        try:
            settings = self._settings()
        except HiresError as err:
            self.status.value = f"error: {err}"
            return
        if self._output_auto:
            self.set_auto_output(self._auto_output())
        out = str(self.output.value)
        if out in ("", "."):
            self.status.value = "error: choose an output .zarr path"
            return
        marker = store_marker(out)
        if answer is None and not self.overwrite.value and marker and marker[0].get("state") == "complete":
            self.finished.visible = True
            self.status.value = (f"{Path(out).name} holds a finished prediction: Reuse shows it, Overwrite writes it "
                                 "again, New store writes beside it")
            return
        if answer == "new":
            out = str(free_path(Path(out).parent, Path(out).stem, ".zarr", Path.exists))
            self.set_auto_output(Path(out))
        self._run_layer, self._run_settings = settings["layer"], settings
        self.result, self._progress_state, self._dirty = None, None, False
        self.resolution.value = ""
        self._refresh_timer.start()
        token = CancelToken()  # Cancel stops between two tile batches; written blocks stay, so Run resumes
        overwrite = self.overwrite.value or answer == "overwrite"
        self.run_job(self._run_job, settings, out, overwrite, token, token=token, status="preparing...",
                     yielded=self._on_event, returned=self._on_result, errored=self._on_error)

    def _run_job(self, settings: dict, out: str, overwrite: bool, cancel: Any) -> Generator[Any, None, Any]:
        net = self.load_model(settings["model"], settings["model_file"])
        image = _layers.engine_input(settings["layer"])
        return (yield from run_steps(image, net, out, settings["options"], region=settings["region"],
                                     overwrite=overwrite, cancel=cancel))

    def _on_event(self, event: Any) -> None:
        from napari_hires.engine.events import BlockWritten, Finishing, Planned

        if isinstance(event, Planned):
            self._add_layers(event.plan)
        elif isinstance(event, BlockWritten):
            self._progress_state = (event.done, event.total)
            box = event.box
            self._pixels_written += (box.y1 - box.y0) * (box.x1 - box.x0)
            self._dirty = True
        elif isinstance(event, Finishing):
            self.status.value = "writing the coarser levels and metadata..."

    def _add_layers(self, plan: Any) -> None:
        """Show the store being written: replace layers of an earlier run into the same store, keep their place."""
        layer = self._run_layer
        out = str(plan.spec.out)
        for old in [lay for lay in self.viewer.layers if lay.metadata.get("source") == out]:
            self.viewer.layers.remove(old)
        step = plan.stride if plan.classify else 1
        limits = None if layer.rgb else layer.contrast_limits
        scale, translate = _level_placement(layer, plan.source.shape)
        choice = plan.resolution
        self.resolution.value = f"warning: {choice.mismatch}" if choice.mismatch else choice.note
        self.result_layers = []
        for data, meta, kind in _layers.prediction_layers(plan.spec, out, scale=scale, translate=translate,
                                                          step=step, contrast_limits=limits):
            added = getattr(self.viewer, f"add_{kind}")(data, **meta)
            self.result_layers.extend(added if isinstance(added, list) else [added])
        total = len(plan.todo) + plan.skipped
        self._done_at_start, self._pixels_written = plan.skipped, 0
        self._run_started = time.perf_counter()
        self._progress_state = (plan.skipped, total)
        self._blocks_in_scope = total
        self._dirty = True
        self.status.value = f"running: {plan.skipped} of {total} blocks already done" if plan.skipped else "running"

    def _refresh(self) -> None:
        """Refresh the result layers and the progress once per tick, only when blocks landed since the last."""
        if not self._dirty or self._progress_state is None:
            return
        self._dirty = False
        for layer in self.result_layers:
            if layer in self.viewer.layers:
                layer.refresh()
        done, total = self._progress_state
        self.progress.max = max(total, 1)
        self.progress.value = done
        if self.worker is None or self.result is not None or done >= total:
            return  # the run's own last words ("writing the coarser levels", "done: ...") stay
        written = done - self._done_at_start
        if written > 0:
            elapsed = time.perf_counter() - self._run_started
            left = elapsed / written * (total - done)
            from napari_hires.engine.estimate import format_seconds

            rate = self._pixels_written / max(elapsed, 1e-9) / 1e6
            self.status.value = f"{done}/{total} blocks · {rate:.2f} Mpx/s · ~{format_seconds(left)} left"
        else:
            self.status.value = f"{done}/{total} blocks"

    def _on_result(self, result: Any) -> None:
        self.result = result
        if result.cancelled:
            self.status.value = (f"cancelled: {result.blocks_done + result.blocks_skipped} of {result.blocks_total} "
                                 "blocks done; Run resumes")
        else:
            self.status.value = (f"done: {result.blocks_done} blocks in {result.seconds:.1f} s, "
                                 f"{result.megapixels_per_second:.2f} Mpx/s"
                                 + (f" ({result.blocks_skipped} from an earlier run)" if result.blocks_skipped
                                    else "")
                                 + result.scaling_note + result.resolution_words)
            self.status.tooltip = f"written to {result.path}"
            settings = self._run_settings
            note = synthetic_note(self.load_model(settings["model"], settings["model_file"]), settings["layer"])
            if note:
                self.status.value += f" · {note}"

    def _on_error(self, err: Exception) -> None:
        """User errors (bad settings, an output in the way) go to the status line; anything else is a bug."""
        report_error(self.status, err, (*USER_ERRORS, ValueError))

    def on_job_finished(self) -> None:
        self._refresh_timer.stop()
        self._dirty = True
        self._refresh()
        self._show_resume()
        if self._estimate_again:
            self._schedule_estimate()


def _level_placement(layer: Any, shape: tuple[int, int]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """World scale and translate of a prediction of shape ``shape`` over a pyramid level of ``layer``: each pixel
    spans its level's factor of level-0 pixels, its centre in the middle of them."""
    h, w = _layers.level0_shape(layer)
    factors = (h / shape[0], w / shape[1])
    scale = tuple(s * f for s, f in zip(layer.scale[-2:], factors))
    translate = tuple(t + (f - 1) / 2 * s for t, s, f in zip(layer.translate[-2:], layer.scale[-2:], factors))
    return scale, translate
