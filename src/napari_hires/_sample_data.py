"""npe2 sample data: the synthetic slide (17 gigapixels, rendered lazily) with its ground-truth labels."""

from __future__ import annotations

from typing import Any

LayerData = tuple[Any, dict[str, Any], str]


def slide_layer_data(size: tuple[int, int] | None = None, seed: int = 0) -> list[LayerData]:
    """Image and (hidden, translucent) ground-truth layers of a synthetic slide of ``size`` (default 131,072²)."""
    from napari_hires.io.synthetic import DEFAULT_SIZE
    from napari_hires.io.synthetic import synthetic_slide as make_slide

    image, labels = make_slide(size or DEFAULT_SIZE, seed=seed)
    (label_data, label_meta, label_kind), = labels.layer_data()
    label_meta.update(opacity=0.4, visible=False)
    return [*image.layer_data(), (label_data, label_meta, label_kind)]


def synthetic_slide() -> list[LayerData]:
    """The npe2 sample: the default-size slide."""
    return slide_layer_data()
