"""The npe2 reader contribution: OME-Zarr, zarr and TIFF/SVS pyramids (plus OME-Zarr labels) as napari layers."""

from __future__ import annotations

import os
from typing import Any, Callable

LayerDataTuple = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerDataTuple]] | None:
    """The reader function if every path is a format napari-hires handles, else None so other readers get a turn."""
    from napari_hires.io.readers import can_read

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths or not all(can_read(p) for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerDataTuple]:
    """The image layer(s) of each path, then one Labels layer per OME-Zarr ``labels/`` child; a large image without a
    pyramid gets lazy coarser levels (see :mod:`napari_hires.io.overview`)."""
    from napari_hires.io.overview import with_overview
    from napari_hires.io.readers import open_image, open_labels

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[LayerDataTuple] = []
    for p in paths:
        layers += with_overview(open_image(p)).layer_data()
        for labels in open_labels(p).values():
            layers += with_overview(labels).layer_data()
    return layers
