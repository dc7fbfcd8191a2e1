"""Screenshots of each workflow widget in use, for the README: run a model, correct labels, export, preview.

Drives the real widgets as a user would (choose, click, wait) on a synthetic slide and saves the whole window::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py docs/images
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

SLIDE = (8192, 8192)
REGION = (3072, 4096, 3072, 4096)  # level-0 rectangle the model runs on


def wait_until(condition, timeout: float = 600.0, status=None) -> None:
    """Process Qt events until ``condition()`` holds; fail loudly (with the widget's status) after ``timeout``."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"gave up waiting after {timeout:.0f} s; status: {status() if status else '?'}")
        QApplication.processEvents()
        time.sleep(0.02)


def settle(seconds: float = 1.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def save(viewer, path: Path) -> None:
    settle()
    Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(path)
    print(f"wrote {path}")


def main(out: Path) -> None:
    import napari

    from napari_hires.demo import add_slide_layers

    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="napari-hires-screens-"))
    viewer = napari.Viewer(title="napari-hires")
    viewer.window.resize(1400, 900)
    image, _truth = add_slide_layers(viewer, SLIDE)
    y0, y1, x0, x1 = REGION
    focus = ((y0 + y1) / 2, (x0 + x1) / 2)

    # 1. Run a model on a rectangle drawn with a Shapes layer; the labels fill in as blocks land.
    _, run = viewer.window.add_plugin_dock_widget("napari-hires", "Run model")
    shapes = viewer.add_shapes([[(y0, x0), (y0, x1), (y1, x1), (y1, x0)]], shape_type="rectangle",
                               edge_color="yellow", face_color="transparent", edge_width=12, name="region")
    run.image.value = image
    run.scope.value = "Shapes rectangle"
    run.shapes.value = shapes
    run.output.value = work / "prediction.zarr"
    viewer.layers.selection.active = image
    run.run_button.clicked.emit()
    wait_until(lambda: str(run.status.value).startswith(("done", "error")))
    if str(run.status.value).startswith("error"):
        raise SystemExit(f"run failed: {run.status.value}")
    wait_until(lambda: run.estimate_worker is None and not str(run.estimate.value).startswith("measuring"))
    viewer.camera.center, viewer.camera.zoom = focus, 0.45
    save(viewer, out / "run_model.png")

    # 2. Correct the prediction at full resolution: check out the window in view, paint, and it is saved.
    viewer.layers.remove(shapes)
    labels = viewer.open(str(work / "prediction.zarr"), plugin="napari-hires")[0]
    for layer in run.result_layers:
        viewer.layers.remove(layer)
    labels.opacity = 0.5
    _, correct = viewer.window.add_plugin_dock_widget("napari-hires", "Correct labels", tabify=True)
    correct.layer_box.value = labels
    viewer.camera.center, viewer.camera.zoom = focus, 1.5
    settle()
    correct.edit_button.clicked.emit()
    wait_until(lambda: any(layer.name.endswith(")") and "editing" in layer.name for layer in viewer.layers))
    editing = next(layer for layer in viewer.layers if "editing" in layer.name)
    editing.brush_size = 40
    for t in np.linspace(0, 1, 25):  # a stroke across the view, class 3 (nucleus)
        world = (focus[0] - 120 + 240 * t, focus[1] - 150 + 300 * t)
        editing.paint(editing.world_to_data(world), 3, refresh=False)
    editing.refresh()
    wait_until(lambda: str(correct.status.value).startswith("saved"), timeout=120,
               status=lambda: correct.status.value)
    save(viewer, out / "correct_labels.png")
    correct.commit_button.clicked.emit()
    wait_until(lambda: not any("editing" in layer.name for layer in viewer.layers), timeout=120)

    # 3. Export the corrected labels as QuPath GeoJSON.
    _, export = viewer.window.add_plugin_dock_widget("napari-hires", "Export labels", tabify=True)
    export.layer.value = labels.name
    export.format.value = "geojson"
    export.output.value = work / "corrected.geojson"
    export.export_button.clicked.emit()
    wait_until(lambda: str(export.status.value).startswith(("wrote", "error", "exported")), timeout=300)
    viewer.camera.center, viewer.camera.zoom = focus, 0.45
    save(viewer, out / "export_labels.png")

    # 4. Live restoration preview of the noisy slide, split view: restored left, original right.
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    from napari_hires.io.synthetic import synthetic_slide

    noisy, _ = synthetic_slide(SLIDE, variant="noisy")
    (data, kwargs, _kind), = noisy.layer_data()
    noisy_layer = viewer.add_image(data, **{**kwargs, "name": "noisy slide"})
    _, preview = viewer.window.add_plugin_dock_widget("napari-hires", "Restoration preview", tabify=True)
    preview.image.value = noisy_layer
    preview.compare.value = "split"
    viewer.camera.center, viewer.camera.zoom = focus, 2.0
    preview.live.value = True
    wait_until(lambda: preview.result is not None and preview.result.missing == 0, timeout=900)  # all cells
    save(viewer, out / "restoration_preview.png")
    viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images"))
