"""``napari-hires demo``: napari on the built-in synthetic slide, interactively or as one screenshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

def add_slide_layers(viewer: Any, size: tuple[int, int] | None = None, seed: int = 0) -> list[Any]:
    """Add the synthetic slide (image) and its ground truth (hidden labels) to ``viewer``; returns the layers."""
    from napari_hires._sample_data import slide_layer_data

    layers = []
    for data, kwargs, layer_type in slide_layer_data(size, seed):
        added = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
        layers.extend(added if isinstance(added, list) else [added])
    viewer.layers.selection.active = layers[0]
    viewer.reset_view()
    return layers


#: The workflow's widgets, docked by the demo (tabbed after the first).
DEMO_WIDGETS = ("Run model", "Correct labels", "Export labels", "Restoration preview")


def open_demo_viewer(size: tuple[int, int] | None = None, *, widgets: bool = True) -> Any:
    """A shown napari viewer with the synthetic slide, framed on the whole slide, the workflow widgets docked."""
    import napari

    viewer = napari.Viewer(title="napari-hires demo")
    add_slide_layers(viewer, size)
    if widgets:
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QApplication

        docks = [viewer.window.add_plugin_dock_widget("napari-hires", name, tabify=i > 0)[0]
                 for i, name in enumerate(DEMO_WIDGETS)]
        QApplication.processEvents()  # let napari tabify the docks before choosing the front one
        docks[0].raise_()  # "Run model" in front
        window = docks[0].parentWidget()  # the main window, by Qt's API (napari has no call to size a dock area)
        window.resizeDocks(docks[:1], [420], Qt.Orientation.Horizontal)
    return viewer


def save_screenshot(viewer: Any, path: str | Path, *, canvas_only: bool = False) -> Path:
    """Render the window (or only the canvas) once and write it to ``path`` as PNG; refuses a blank canvas."""
    import numpy as np
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Let the multiscale slicer load the visible tiles before grabbing the frame.
    for _ in range(20):
        QApplication.processEvents()
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    if np.ptp(canvas[..., :3]) == 0:
        raise RuntimeError(f"the demo rendered a blank frame; no screenshot written to {path}")
    frame = canvas if canvas_only else viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(frame).save(path)
    return path


def run_demo(screenshot: str | Path | None = None, size: tuple[int, int] | None = None) -> None:
    """Open the demo; with ``screenshot`` render one frame to that file and exit instead of running the GUI."""
    import napari

    viewer = open_demo_viewer(size)
    viewer.window.resize(1400, 900)
    if screenshot is None:
        napari.run()
        return
    try:
        out = save_screenshot(viewer, screenshot)
        print(f"screenshot written to {out}")
    finally:
        from napari.qt.threading import WorkerBase

        WorkerBase.await_workers(msecs=120_000)  # a docked widget may still be timing the model for its estimate
        viewer.close()
