"""npe2 writer contributions: save a Labels layer as OME-Zarr labels, a pyramidal TIFF or GeoJSON for QuPath.

Each takes npe2's single-layer signature ``(path, data, attributes) -> [path]``; ``data`` may be a multiscale list.
Class names come from the layer's features or metadata, colours from its colormap (see
:func:`napari_hires.labels.export.labels_from_layer_data`). Like napari's own writers, these replace an existing output.
"""

from __future__ import annotations

from typing import Any


def _write(path: str, data: Any, attributes: dict[str, Any], fmt: str) -> list[str]:
    from napari_hires.labels.export import export_labels, labels_from_layer_data

    labels = labels_from_layer_data(data, attributes)
    return [export_labels(labels, path, fmt, overwrite=True)]


def write_ome_zarr_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a standalone OME-Zarr label image (image-label colours and class names)."""
    return _write(path, data, attributes, "ome-zarr")


def write_tiff_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as a tiled, compressed pyramidal OME-TIFF."""
    return _write(path, data, attributes, "tiff")


def write_geojson_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Save a Labels layer as GeoJSON polygons with QuPath classifications."""
    return _write(path, data, attributes, "geojson")
