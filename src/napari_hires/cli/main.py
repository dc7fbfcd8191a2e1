"""``napari-hires``: the parser of every sub-command (one module each in this package), and one way to report
their errors and warnings in a line."""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import warnings
from typing import Callable, Iterator, Sequence

from napari_hires.cli import demo, export, import_checkpoint, predict, pyramid, synth, train
from napari_hires.errors import WRITE_ERRORS, HiresError, HiresWarning


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-command per job."""
    parser = argparse.ArgumentParser(
        prog="napari-hires",
        description="View, run models on, correct and export multi-gigapixel images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    for command in (demo, synth, pyramid, predict, train, export, import_checkpoint):
        command.add_parser(sub)
    return parser


#: The arguments naming each sub-command's output (the first one given counts); "output" for the others.
OUTPUT_ARGS = {"demo": ("screenshot",), "train": ("out",), "export": ("output", "image"), "import": ("out",)}


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

