"""``napari-hires pyramid IN OUT.zarr``: any readable image as a chunked OME-Zarr 0.5 pyramid, block by block."""

from __future__ import annotations

import argparse
from typing import Any

from napari_hires.cli.args import positive


def add_parser(sub: Any) -> None:
    """Add the ``pyramid`` sub-command to the sub-parsers of ``napari-hires``."""
    p = sub.add_parser("pyramid", help="turn any readable image into an OME-Zarr 0.5 pyramid")
    p.add_argument("input", help="TIFF/OME-TIFF/SVS, PNG, zarr or OME-Zarr")
    p.add_argument("output", help="output .zarr path")
    p.add_argument("--chunk", type=positive, choices=(256, 512, 1024), default=512)
    p.add_argument("--shard", type=positive, default=None, help="shard side in pixels (a multiple of --chunk)")
    p.add_argument("--kind", choices=("auto", "image", "labels"), default="auto",
                   help="labels use nearest/mode downsampling, images the mean")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_hires.io.pyramid_builder import build_pyramid

    build_pyramid(args.input, args.output, chunk=args.chunk, shard=args.shard, kind=args.kind,
                  overwrite=args.overwrite, progress=not args.quiet)
    return 0
