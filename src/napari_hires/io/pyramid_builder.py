"""Turn any readable image (even a single-level TIFF larger than memory) into an OME-Zarr 0.5 pyramid."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from napari_hires.errors import HiresError
from napari_hires.io.pyramid import Pyramid

KINDS = ("auto", "image", "labels")


def build_pyramid(
    source: str | os.PathLike | Pyramid,
    out: str | os.PathLike,
    *,
    chunk: int = 512,
    shard: int | None = None,
    kind: str = "auto",
    min_size: int = 256,
    overwrite: bool = False,
    progress: bool | Callable[[int, int], None] = False,
) -> str:
    """Copy level 0 of ``source`` block by block and derive coarser levels (mean, or mode for labels); returns ``out``.

    ``kind="auto"`` keeps the kind the reader reports; "labels" forces mode downsampling for integer label images,
    and is refused before anything is written for other images (which would give a store no reader accepts).
    """
    from napari_hires.io.ome_zarr_writer import write_ome_zarr

    if kind not in KINDS:
        raise HiresError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if isinstance(source, Pyramid):
        pyramid = source
    else:
        from napari_hires.io.readers import open_image

        pyramid = open_image(source)
    if kind != "auto" and kind != pyramid.kind:
        pyramid = dataclasses.replace(pyramid, kind=kind)
    if pyramid.kind == "labels":
        _check_labels(pyramid, source if not isinstance(source, Pyramid) else pyramid.name)
    return write_ome_zarr(
        pyramid.with_levels(pyramid.levels[:1]),
        out,
        chunk=chunk,
        shard=shard,
        derive_levels=True,
        overwrite=overwrite,
        progress=progress,
        min_size=min_size,
    )


def _check_labels(pyramid: Pyramid, where: str | os.PathLike) -> None:
    """Labels are single-channel integers; an RGB, multi-channel or float image is refused with what to do instead."""
    channels = pyramid.shape[pyramid.axes.index("c")] if "c" in pyramid.axes else 1
    if channels == 1 and (np.issubdtype(pyramid.dtype, np.integer) or pyramid.dtype == bool):
        return
    what = str(pyramid.dtype) if channels == 1 else f"{channels}-channel {pyramid.dtype}"
    what += " (RGB)" if channels in (3, 4) and pyramid.dtype == np.uint8 else ""
    raise HiresError(f"{where} is a {what} image, not labels: labels must be single-channel integers; "
                     "build it as an image (--kind image or auto)")
