"""The "Correct labels" dock widget: edit the full-resolution window under the view of a multiscale labels store.

napari cannot paint multiscale Labels layers, so "Edit here" checks out the level-0 window under the canvas (at most
``max side`` pixels on a side) as an ordinary Labels layer at its offset, to be edited with napari's own tools.
Every stroke, fill, polygon, erase, undo and redo is saved to the store as soon as it is made (on a background
thread, in order) and the multiscale layer is refreshed, so closing napari or a crash loses at most the last stroke.
"Commit" writes the whole window once more and closes the editing layer; "Discard" writes back the window as it was
checked out (undoing the autosaved edits) and closes it. The work is done by :mod:`napari_hires.labels.store`.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from magicgui.widgets import Container, Label, PushButton, SpinBox
from qtpy.QtCore import QObject, QTimer, Signal

from napari_hires.errors import HiresError
from napari_hires.labels.store import MAX_SIDE, EditSession, LabelStore
from napari_hires.widgets import _layers
from napari_hires.widgets._base import DockWidget
from napari_hires.widgets._status import report_error

_SAVED, _COMMIT, _DISCARD = "saved", "commit", "discard"
#: Delay between leaving paint mode and removing a closed editing layer (a few frames; see _close_session).
_REMOVE_AFTER_MS = 100


class _Relay(QObject):
    """Carries a finished background write to the main thread (a signal emitted from another thread is queued)."""

    done = Signal(object)


def _check_out(store: LabelStore, window: Any, previous: EditSession | None) -> EditSession:
    """Let the previous session's queued writes land (they may overlap the window), then check the window out."""
    if previous is not None:
        previous.close(wait=True)
    return EditSession(store, window)


def layer_source(layer: Any) -> str | None:
    """The store a layer was read from: our reader's ``metadata["source"]``, else napari's ``source.path``."""
    return (getattr(layer, "metadata", None) or {}).get("source") or getattr(layer.source, "path", None)


class CorrectLabelsWidget(DockWidget):
    """Check out, edit (autosaved stroke by stroke), commit or discard the window of a labels store under the view."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.session: EditSession | None = None
        self.edit_layer: Any = None
        self.source_layer: Any = None
        self.pending = 0  # background writes not yet landed
        self._worker: Any = None
        self._stores: dict[str, LabelStore] = {}
        self.layer_box = self.layer_choice(
            "labels", Labels, where=lambda layer: layer is not self.edit_layer and bool(layer_source(layer)),
            tooltip="a labels layer read from an OME-Zarr label store (a prediction or imported labels)")
        self.max_side = SpinBox(label="max side", value=MAX_SIDE, min=256, max=8192, step=256,
                                tooltip="largest window (level-0 pixels a side) checked out; a larger view gives "
                                        "its central part")
        self.edit_button = PushButton(text="Edit here")
        self.edit_button.tooltip = ("check out the full-resolution window under the view as an editable layer; "
                                    "every stroke is saved to the store as you make it")
        self.commit_button = PushButton(text="Commit")
        self.commit_button.tooltip = ("write the whole window to the store (strokes are already saved one by one), "
                                      "refresh the labels and close the editing layer")
        self.discard_button = PushButton(text="Discard")
        self.discard_button.tooltip = ("undo every edit since 'Edit here' in the store (they were autosaved): write "
                                       "back the window as it was checked out and close the editing layer")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        form = Container(widgets=[self.layer_box, self.max_side, self.edit_button, self.commit_button,
                                  self.discard_button, self.status])
        self.set_content(form)

        self._relay = _Relay(self)
        self._relay.done.connect(self._on_written)
        self._save_timer = QTimer(self)  # saves after napari has applied the edit (paint is emitted before it)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(0)
        self._save_timer.timeout.connect(self.save)
        self.edit_button.changed.connect(self.edit_here)
        self.commit_button.changed.connect(self.commit)
        self.discard_button.changed.connect(self.discard)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self._set_editing(False)

    # ------------------------------------------------------------------------------------------------ choosing
    def _store_for(self, layer: Any) -> LabelStore:
        """One LabelStore per source, so every commit to it goes through the same lock."""
        source = str(layer_source(layer))
        if (Path(source) / "labels" / layer.name).is_dir():  # e.g. napari-ome-zarr: the image's path, labels by name
            source = str(Path(source) / "labels" / layer.name)
        if source not in self._stores:
            self._stores[source] = LabelStore.open(source)
        return self._stores[source]

    def _view_in_pixels(self, layer: Any) -> tuple[np.ndarray, np.ndarray]:
        """Center and extent (y, x) of the canvas in the layer's level-0 pixels."""
        camera = _layers.camera(self.viewer)
        center = np.asarray(layer.world_to_data(np.asarray(camera.center)[-layer.ndim:]))[-2:]
        extent = np.asarray(self.viewer.canvas.size, dtype=float) / camera.zoom
        return center, extent / np.abs(np.asarray(layer.scale[-2:], dtype=float))

    # ------------------------------------------------------------------------------------------------ actions
    def edit_here(self) -> None:
        """Check out the window under the view (off the main thread) and open it as an editable Labels layer."""
        from napari.qt.threading import create_worker

        layer = self.layer_box.value
        if layer is None:
            self.status.value = "open a label store first (File > Open an OME-Zarr prediction or labels)"
            return
        try:
            store = self._store_for(layer)
            window, clipped = store.window_for_view(*self._view_in_pixels(layer), max_side=self.max_side.value)
        except HiresError as err:
            self.status.value = f"error: {err}"
            return
        previous = self.session
        self._close_session()
        self.source_layer = layer
        note = (f" The view is larger than {self.max_side.value} px: editing its central part; zoom in to edit "
                "elsewhere." if clipped else "")
        self._set_busy(f"checking out {window}...")
        worker = create_worker(_check_out, store, window, previous, _start_thread=False,
                               _connect={"returned": lambda session: self._open_session(session, note),
                                         "errored": self._on_error})
        self._worker = worker
        worker.start()

    def _schedule_save(self, _event: Any = None) -> None:
        self._save_timer.start()

    def save(self) -> None:
        """Queue the write of what changed in the editing layer since the last save (called after every edit)."""
        if self.session is None or self.edit_layer is None:
            return
        try:
            future = self.session.save(self.edit_layer.data)
        except HiresError as err:
            self.status.value = f"error: {err}"
            return
        if future is not None:
            self._track(future, _SAVED)

    def commit(self) -> None:
        """Write the whole window (off the main thread), refresh the labels and close the editing layer."""
        if self.session is None:
            self.status.value = "nothing checked out: click 'Edit here' first"
            return
        self._set_busy(f"committing {self.session.window}...")
        self._track(self.session.commit(self.edit_layer.data), _COMMIT)

    def discard(self) -> None:
        """Write back the window as checked out (undoing the autosaved edits) and close the editing layer."""
        if self.session is None:
            self.status.value = "nothing checked out: click 'Edit here' first"
            return
        future = self.session.revert()
        self._set_busy(f"discarding the edits of {self.session.window}...")
        if future is None:
            self._close_session(save=False)
            self.status.value = "discarded: nothing had changed"
            return
        self._track(future, _DISCARD)

    # ------------------------------------------------------------------------------------------------ sessions
    def _open_session(self, session: EditSession, note: str) -> None:
        source, w = self.source_layer, session.window
        scale = np.asarray(source.scale[-2:], dtype=float)
        layer = self.viewer.add_labels(
            session.data, name=f"{source.name} (editing {w.y0}:{w.y1}, {w.x0}:{w.x1})", scale=scale,
            translate=np.asarray(source.translate[-2:], dtype=float) + scale * (w.y0, w.x0),
            colormap=source.colormap.model_copy(), features=source.features,
        )
        self.session, self.edit_layer = session, layer
        layer.events.paint.connect(self._schedule_save)  # strokes, fills, polygons, erasing
        layer.events.set_data.connect(self._schedule_save)  # undo and redo
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.refresh_layer_choices()
        self._set_editing(True)
        self.status.value = (f"editing {w} of {source.name} ({w.shape[0]} x {w.shape[1]} px); every edit is saved "
                             f"as you make it.{note}")

    def _close_session(self, save: bool = True) -> None:
        """Save what is left (unless discarding), stop listening to the editing layer and remove it; queued writes
        still land."""
        session, layer = self.session, self.edit_layer
        if session is None:
            return
        if save:
            self.save()
        self.session, self.edit_layer = None, None
        layer.events.paint.disconnect(self._schedule_save)
        layer.events.set_data.disconnect(self._schedule_save)
        # napari 0.9.2 (seen with Mesa) can crash drawing the next Labels layer added after one removed in paint
        # mode: leave paint mode, let the canvas draw once, then remove the layer.
        layer.mode = "pan_zoom"
        QTimer.singleShot(_REMOVE_AFTER_MS, lambda: self._remove(layer))
        session.close(wait=False)
        self._set_editing(False)

    def _remove(self, layer: Any) -> None:
        if layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is self.edit_layer:  # the user deleted the editing layer: keep the autosaved edits
            self._close_session()
            self.status.value = "editing layer removed; the edits made in it are saved"
            self.refresh_layer_choices()

    # ------------------------------------------------------------------------------------------------ writes
    def _track(self, future: Future, then: str) -> None:
        self.pending += 1
        source = self.source_layer
        future.add_done_callback(lambda f: self._hand_over((f, then, source)))

    def _hand_over(self, result: tuple[Future, str, Any]) -> None:
        """On the writer's thread: hand a finished write to the main thread, unless the dock was deleted meanwhile
        (Qt then refuses the signal; the write itself is done and there is nothing left to show)."""
        try:
            self._relay.done.emit(result)
        except RuntimeError:
            pass

    def _on_written(self, result: tuple[Future, str, Any]) -> None:
        """On the main thread after a background write: report it, refresh the labels, close on commit/discard."""
        future, then, source = result
        self.pending -= 1
        err = future.exception()
        if err is not None:
            self._set_editing(self.session is not None)
            self.status.value = (f"error: {err}" if isinstance(err, HiresError)
                                 else f"saving failed ({type(err).__name__}: {err}); the edits stay in the editing "
                                      "layer and are written again with the next edit or Commit")
            return
        if self.pending == 0 and source in self.viewer.layers:
            source.data = self._store_for(source).levels  # fresh graph names: no cached pre-edit chunks
        box = future.result()
        if then in (_COMMIT, _DISCARD) and self.session is not None:
            self._close_session(save=then == _COMMIT)
            done = "committed" if then == _COMMIT else "discarded the edits of"
            self.status.value = f"{done} {box} of {source.name}; the labels layer shows the store"
        elif then == _SAVED and self.session is not None:
            self.status.value = f"saved {box} (level 0 and every coarser level)"

    # ------------------------------------------------------------------------------------------------ state
    def _set_editing(self, editing: bool) -> None:
        self.edit_button.enabled = True
        self.commit_button.enabled = self.discard_button.enabled = editing

    def _set_busy(self, message: str) -> None:
        self.status.value = message
        self.edit_button.enabled = self.commit_button.enabled = self.discard_button.enabled = False

    def _on_error(self, err: Exception) -> None:
        """User errors go to the status line; anything else is a bug: re-raise it."""
        self._set_editing(self.session is not None)
        report_error(self.status, err, (HiresError,))
