"""The ``napari-hires`` command: the same functions as the plugin, headless.

Each sub-command imports what it needs only when it runs, so ``napari-hires --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import warnings
from typing import Callable, Iterator, Sequence

from napari_hires.cli_export import add_export_parser
from napari_hires.cli_predict import add_predict_parser
from napari_hires.cli_train import add_train_parser
from napari_hires.errors import WRITE_ERRORS, HiresError, HiresWarning


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


#: The arguments naming each sub-command's output (the first one given counts); "output" for the others.
OUTPUT_ARGS = {"demo": ("screenshot",), "train": ("out",), "export": ("output", "image")}


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and every exception behind it: causes, contexts and the members of exception groups (zarr writes
    through asyncio, which wraps what failed), each once."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        item = todo.pop(0)
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo += [item.__cause__, item.__context__, *getattr(item, "exceptions", ())]


def _inside(path: str, output: str) -> bool:
    path, output = os.path.abspath(path), os.path.abspath(output)
    return path == output or path.startswith(output.rstrip(os.sep) + os.sep)


def write_error(err: BaseException, output: str | None) -> str | None:
    """One line for a failed write (read-only, permissions, full disk, quota) found anywhere behind ``err``, naming
    the output and the file that failed; None when ``err`` holds no such failure."""
    for item in _chain(err):
        if not isinstance(item, OSError) or item.errno not in WRITE_ERRORS:
            continue
        what, todo = WRITE_ERRORS[item.errno]
        where = os.fsdecode(item.filename) if item.filename is not None else None
        if (item.errno in (errno.EACCES, errno.EPERM) and where is not None and os.path.exists(where)
                and (output is None or not _inside(where, output))):  # e.g. an input that cannot be read
            return f"cannot access {where}: {what}; check its permissions"
        target = output or where or "the output"
        detail = f" ({where})" if where is not None and os.path.abspath(where) != os.path.abspath(target) else ""
        return f"cannot write {target}: {what}{detail}; {todo}"
    return None


def _output(args: argparse.Namespace) -> str | None:
    names = OUTPUT_ARGS.get(args.command, ("output",))
    return next((str(getattr(args, n)) for n in names if getattr(args, n, None) is not None), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        with _one_line_warnings(args.command):
            return func(args)
    except (HiresError, FileNotFoundError, FileExistsError) as err:
        print(f"napari-hires {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-hires {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        line = write_error(err, _output(args))
        if line is None:
            raise
        _quiet_shutdown()
        print(f"napari-hires {args.command}: error: {line}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _one_line_warnings(command: str) -> Iterator[None]:
    """Our warnings (unverifiable weights, a stale lock taken over, labels narrowed for TIFF, ...) print as
    "napari-hires CMD: warning: ...", not with the source line that raised them; others as Python shows them."""
    with warnings.catch_warnings():
        plain = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, HiresWarning):
                print(f"napari-hires {command}: warning: {message}", file=sys.stderr)
            else:
                plain(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _quiet_shutdown() -> None:
    """Silence the echoes of a failed write: zarr's other writes in flight fail or are left pending, and at exit
    asyncio logs each task ("Task exception was never retrieved", "Task was destroyed but it is pending") and Python
    each coroutine collected after zarr closed its event loop ("Exception ignored in ... Event loop is closed",
    "coroutine ... was never awaited"), dozens of tracebacks under the one line that says what happened."""
    logging.getLogger("asyncio").disabled = True
    sys.unraisablehook = lambda unraisable: None
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
