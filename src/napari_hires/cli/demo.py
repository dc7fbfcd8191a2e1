"""``napari-hires demo``: napari on the built-in synthetic slide (or one frame of it rendered to a PNG)."""

from __future__ import annotations

import argparse
from typing import Any

from napari_hires.cli.args import positive


def add_parser(sub: Any) -> None:
    """Add the ``demo`` sub-command to the sub-parsers of ``napari-hires``."""
    p = sub.add_parser("demo", help="open napari on the built-in synthetic slide")
    p.add_argument("--screenshot", metavar="PATH", help="render one frame to PATH (PNG) and exit")
    p.add_argument("--size", nargs=2, type=positive, metavar=("H", "W"), help="slide size in pixels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_hires.demo import run_demo

    run_demo(screenshot=args.screenshot, size=tuple(args.size) if args.size else None)
    return 0
