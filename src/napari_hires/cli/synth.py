"""``napari-hires synth OUT.zarr``: the synthetic slide (image and ground-truth labels) written to OME-Zarr."""

from __future__ import annotations

import argparse
from typing import Any

from napari_hires.cli.args import positive


def add_parser(sub: Any) -> None:
    """Add the ``synth`` sub-command to the sub-parsers of ``napari-hires``."""
    p = sub.add_parser("synth", help="write the synthetic slide (image and labels) to OME-Zarr")
    p.add_argument("output", help="output .zarr path")
    p.add_argument("--size", nargs=2, type=positive, metavar=("H", "W"), default=(8192, 8192))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=positive, default=512)
    p.add_argument("--variant", choices=("clean", "noisy", "blurred"), default="clean")
    p.add_argument("--no-labels", action="store_true", help="write the image only")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_hires.io.ome_zarr_writer import write_ome_zarr
    from napari_hires.io.synthetic import synthetic_slide

    image, labels = synthetic_slide(tuple(args.size), seed=args.seed, chunk=args.chunk, variant=args.variant)
    out = write_ome_zarr(
        image,
        args.output,
        labels=None if args.no_labels else {"ground_truth": labels},
        chunk=args.chunk,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(f"wrote a {args.size[0]} x {args.size[1]} synthetic slide ({args.variant}) to {out}")
    return 0
