"""npe2 sample data: the synthetic slide (17 gigapixels, rendered lazily) with its ground-truth labels."""

from __future__ import annotations

from typing import Any


def synthetic_slide() -> list[tuple[Any, dict[str, Any], str]]:
    """Image and (hidden, translucent) ground-truth layers of the default-size synthetic slide."""
    from napari_hires.io.synthetic import synthetic_slide as make_slide

    image, labels = make_slide()
    (label_data, label_meta, label_kind), = labels.layer_data()
    label_meta.update(opacity=0.4, visible=False)
    return [*image.layer_data(), (label_data, label_meta, label_kind)]
