"""The ``napari-hires`` command: the same functions as the plugin, headless.

Each sub-command imports what it needs only when it runs, so ``napari-hires --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from napari_hires.cli_export import add_export_parser
from napari_hires.cli_predict import add_predict_parser
from napari_hires.cli_train import add_train_parser
from napari_hires.errors import HiresError


def _size(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {value}")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    from napari_hires.demo import run_demo

    run_demo(screenshot=args.screenshot, size=tuple(args.size) if args.size else None)
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
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


def _cmd_pyramid(args: argparse.Namespace) -> int:
    from napari_hires.io.pyramid_builder import build_pyramid

    build_pyramid(
        args.input,
        args.output,
        chunk=args.chunk,
        shard=args.shard,
        kind=args.kind,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="napari-hires",
        description="View, run models on, correct and export multi-gigapixel images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="open napari on the built-in synthetic slide")
    p.add_argument("--screenshot", metavar="PATH", help="render one frame to PATH (PNG) and exit")
    p.add_argument("--size", nargs=2, type=_size, metavar=("H", "W"), help="slide size in pixels")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("synth", help="write the synthetic slide (image and labels) to OME-Zarr")
    p.add_argument("output", help="output .zarr path")
    p.add_argument("--size", nargs=2, type=_size, metavar=("H", "W"), default=(8192, 8192))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=_size, default=512)
    p.add_argument("--variant", choices=("clean", "noisy", "blurred"), default="clean")
    p.add_argument("--no-labels", action="store_true", help="write the image only")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("pyramid", help="turn any readable image into an OME-Zarr 0.5 pyramid")
    p.add_argument("input", help="TIFF/OME-TIFF/SVS, PNG, zarr or OME-Zarr")
    p.add_argument("output", help="output .zarr path")
    p.add_argument("--chunk", type=_size, choices=(256, 512, 1024), default=512)
    p.add_argument("--shard", type=_size, default=None, help="shard side in pixels (a multiple of --chunk)")
    p.add_argument("--kind", choices=("auto", "image", "labels"), default="auto",
                   help="labels use nearest/mode downsampling, images the mean")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_pyramid)

    add_predict_parser(sub)
    add_train_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (HiresError, FileNotFoundError, FileExistsError) as err:
        print(f"napari-hires {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-hires {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
