"""``napari-hires demo``: napari on the built-in synthetic slide, interactively or as one screenshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

def open_demo_viewer(size: tuple[int, int] | None = None, *, show: bool = True) -> Any:
    """A napari viewer with the synthetic slide and its ground-truth labels, framed on the whole slide."""
    import napari

    from napari_hires.io.synthetic import DEFAULT_SIZE, synthetic_slide

    image, labels = synthetic_slide(size or DEFAULT_SIZE)
    viewer = napari.Viewer(title="napari-hires demo", show=show)
    for pyramid in (image, labels):
        for data, kwargs, layer_type in pyramid.layer_data():
            if layer_type == "labels":
                kwargs = {**kwargs, "opacity": 0.4, "visible": False}
            getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    viewer.reset_view()
    return viewer


def save_screenshot(viewer: Any, path: str | Path) -> Path:
    """Render the canvas once and write it to ``path`` as PNG; refuses a blank frame."""
    import numpy as np
    from qtpy.QtWidgets import QApplication

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Let the multiscale slicer load the visible tiles before grabbing the frame.
    for _ in range(20):
        QApplication.processEvents()
    frame = viewer.screenshot(str(path), canvas_only=True, flash=False)
    if np.ptp(frame[..., :3]) == 0:
        raise RuntimeError(f"the demo rendered a blank frame; no screenshot written to {path}")
    return path


def run_demo(screenshot: str | Path | None = None, size: tuple[int, int] | None = None) -> None:
    """Open the demo; with ``screenshot`` render one frame to that file and exit instead of running the GUI."""
    import napari

    viewer = open_demo_viewer(size)
    if screenshot is None:
        napari.run()
        return
    try:
        out = save_screenshot(viewer, screenshot)
        print(f"screenshot written to {out}")
    finally:
        viewer.close()
