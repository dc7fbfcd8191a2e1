"""Between napari layers and the engine: where a layer's pixels come from, regions in level-0 pixels, store layers.

Qt-free: these take napari layer and viewer objects but never touch Qt, so they are safe in tests and workers.
"""

from __future__ import annotations

import importlib
import math
import threading
from dataclasses import replace
from typing import Any

import numpy as np

from napari_hires.errors import HiresError

LayerDataTuple = tuple[Any, dict[str, Any], str]
Region = tuple[int, int, int, int]  # y0, y1, x0, x1 in level-0 pixels

_warming = threading.Lock()
_warmed = False


def warm_layer_imports() -> None:
    """Import, off the UI thread, what napari imports the first time it makes a Labels layer (pandas, parts of
    scikit-image, scipy.linalg for its random label colours: about a second), so that a run's first result layer
    does not freeze the viewer."""
    global _warmed
    with _warming:
        if _warmed:
            return
        _warmed = True

    def run() -> None:
        for name in ("pandas", "skimage.color", "skimage.exposure", "skimage.util", "scipy.linalg"):
            importlib.import_module(name)

    threading.Thread(target=run, name="hires-warm-imports", daemon=True).start()


def layer_source(layer: Any) -> str | None:
    """The file a layer was read from: napari's ``layer.source.path`` or the ``metadata["source"]`` our reader sets."""
    path = getattr(getattr(layer, "source", None), "path", None) or layer.metadata.get("source")
    return str(path) if path else None


def level0(layer: Any) -> Any:
    """Full-resolution data of a layer (level 0 of a multiscale one)."""
    return layer.data[0] if layer.multiscale else layer.data


def check_plane(layer: Any) -> None:
    """Refuse layers the engine cannot take: anything but one 2-d (grey or RGB) plane."""
    if layer.ndim != 2:
        raise HiresError(f"layer {layer.name!r} has {layer.ndim} dimensions; the model runs on 2-d images (grey or "
                         "RGB): choose a 2-d layer, or open one plane of the stack as its own layer")


def engine_input(layer: Any) -> Any:
    """What to give the engine for ``layer``: its file when that file's level 0 is what the layer shows (a stable,
    resumable run record), else its level-0 array. Opens the file: call it off the UI thread."""
    path = layer_source(layer)
    data = level0(layer)
    if path:
        from napari_hires.io.readers import open_image

        try:
            pyramid = open_image(path)
        except (HiresError, OSError):  # moved, deleted or unreadable since: use the pixels the layer holds
            return data
        if tuple(pyramid.levels[0].shape) == tuple(data.shape):
            return path
    return data


def is_synthetic_slide(layer: Any) -> bool:
    """True for a layer showing napari-hires's synthetic slide (its lazily rendered levels, or its name)."""
    name = str(getattr(level0(layer), "name", "") or "")
    return name.startswith("synthetic-slide-") or "synthetic slide" in layer.name


def level0_shape(layer: Any) -> tuple[int, int]:
    """(height, width) of the layer's level 0 in pixels."""
    shape = level0(layer).shape
    return (shape[-3], shape[-2]) if layer.rgb else (shape[-2], shape[-1])


def world_box_to_region(layer: Any, corners: np.ndarray) -> Region | None:
    """Level-0 pixel region of ``layer`` covering world points ``corners`` (n, ndim), clipped; None when outside."""
    data = np.array([layer.world_to_data(c)[-2:] for c in corners], dtype=float)
    lo, hi = data.min(0), data.max(0)  # pixel i covers [i - 0.5, i + 0.5)
    h, w = level0_shape(layer)
    y0, x0 = (max(0, math.floor(v + 0.5)) for v in lo)
    y1, x1 = min(h, math.ceil(hi[0] + 0.5)), min(w, math.ceil(hi[1] + 0.5))
    return (int(y0), int(y1), int(x0), int(x1)) if y0 < y1 and x0 < x1 else None


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9 on, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def visible_region(viewer: Any, layer: Any) -> Region | None:
    """The part of ``layer``'s level 0 the canvas shows, from the camera's centre and zoom and the canvas size."""
    cam = camera(viewer)
    half = np.asarray(viewer.canvas.size, float) / cam.zoom / 2
    cy, cx = cam.center[-2:]
    point = np.asarray(viewer.dims.point, float)
    displayed = list(viewer.dims.displayed)[-2:]
    corners = []
    for y in (cy - half[0], cy + half[0]):
        for x in (cx - half[1], cx + half[1]):
            p = point.copy()
            p[displayed] = (y, x)
            corners.append(p[-layer.ndim:])
    return world_box_to_region(layer, np.array(corners))


def rectangle_region(shapes: Any, layer: Any) -> Region | None:
    """Level-0 pixels of ``layer`` under the selected (else the first) shape of a Shapes layer, by its bounding box."""
    if not len(shapes.data):
        raise HiresError(f"Shapes layer {shapes.name!r} has no shapes: draw a rectangle on it first")
    index = min(shapes.selected_data) if shapes.selected_data else 0
    vertices = np.asarray(shapes.data[index], float)
    world = np.array([shapes.data_to_world(v) for v in vertices])
    return world_box_to_region(layer, world[:, -layer.ndim:])


def prediction_layers(spec: Any, path: str, *, scale: tuple[float, float], translate: tuple[float, float],
                      step: int = 1, contrast_limits: Any = None) -> list[LayerDataTuple]:
    """Layers over a prediction store being written (read live from its arrays; napari's cache is off so that new
    blocks show on refresh), placed by the input layer's ``scale``/``translate``: Labels with the model's classes,
    an Image for restoration, an inferno heatmap of the last class for classification (``step`` input pixels each).
    """
    template = spec.stores[0].pyramid
    levels = template.levels
    spatial = {"y": 0, "x": 1}
    meta_source = {"source": str(path)}
    if "c" in template.axes and template.axes.startswith("c"):  # classification heatmap (classes, y, x)
        cls = levels[0].shape[0] - 1
        names = template.channel_names or [f"class {i}" for i in range(cls + 1)]
        return [([lv[cls] for lv in levels], {
            "name": f"{template.name} {names[cls]}", "multiscale": True, "cache": False, "colormap": "inferno",
            "contrast_limits": (0.0, 1.0), "opacity": 0.6, "metadata": meta_source,
            "scale": [s * step for s in scale],
            "translate": [t + (step - 1) / 2 * s for t, s in zip(translate, scale)],
        }, "image")]
    placed = replace(
        template, levels=levels, source=str(path),
        scale=tuple(scale[spatial[a]] if a in spatial else 1.0 for a in template.axes),
        translation=tuple(translate[spatial[a]] if a in spatial else 0.0 for a in template.axes),
    )
    out = []
    for _data, meta, kind in placed.layer_data():
        meta.update(cache=False, multiscale=len(levels) > 1)  # napari reads a list of one array as 1-d data
        if kind == "image" and not placed.rgb and contrast_limits is not None:
            meta["contrast_limits"] = list(contrast_limits)
        out.append((levels if len(levels) > 1 else levels[0], meta, kind))
    return out
