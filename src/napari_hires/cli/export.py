"""``napari-hires export LABELS [OUTPUT] --format ome-zarr|tiff|geojson``: corrected labels for other tools."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``export`` sub-command to the sub-parsers of ``napari-hires``."""
    p = sub.add_parser(
        "export",
        help="export labels to OME-Zarr labels, a pyramidal TIFF or GeoJSON polygons (QuPath)",
        description="Export a label image block by block. The format follows OUTPUT's suffix "
                    "(.zarr, .tif/.tiff, .geojson) unless --format is given.",
    )
    p.add_argument("labels", help="an OME-Zarr label image, an OME-Zarr image with labels/, or a label TIFF/zarr")
    p.add_argument("output", nargs="?", help="output .zarr, .tif or .geojson path (omit with --image)")
    p.add_argument("--format", help="ome-zarr, tiff or geojson")
    p.add_argument("--image", metavar="IMAGE.zarr",
                   help="add the labels as labels/NAME of this OME-Zarr image instead of writing OUTPUT")
    p.add_argument("--name", help="which labels/ child of LABELS to read when it has several, and the name "
                                  "under IMAGE.zarr/labels/ (default: labels)")
    p.add_argument("--block", type=int, default=4096, help="side in pixels of the blocks read at a time")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from napari_hires.labels.export import export_labels, export_format, open_label_source

    fmt = export_format(args.format, args.output if args.output is not None else args.image)
    labels = open_label_source(args.labels, args.name)
    out = export_labels(labels, args.output, fmt, image=args.image, name=args.name, overwrite=args.overwrite,
                        progress=not args.quiet, block=args.block)
    print(f"exported {args.labels} to {out} ({fmt})")
    return 0

