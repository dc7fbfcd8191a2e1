"""``napari-hires predict``: a model over a whole image into a resumable OME-Zarr store, locally or on dask.

Imports only argparse at module level so that ``napari-hires --help`` stays fast; the engine, torch and
dask.distributed are imported when the command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Any, Iterator

from napari_hires.cli.args import non_negative, positive

#: Seconds to wait for a scheduler given with --scheduler before saying it cannot be reached.
CONNECT_TIMEOUT = 20


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``predict`` sub-command to ``sub`` (from ``parser.add_subparsers``) and return its parser."""
    p = sub.add_parser(
        "predict", help="run a model over an image into a resumable OME-Zarr store",
        description="Run a model tile by tile over INPUT (or a region of it) into the OME-Zarr store OUTPUT. "
                    "Rerunning an interrupted command resumes it.",
    )
    p.add_argument("input", help="image: OME-Zarr/zarr, TIFF/OME-TIFF/SVS, PNG or JPEG")
    p.add_argument("output", help="output .zarr path")
    p.add_argument("--model", required=True, metavar="NAME|FILE",
                   help="a registered model name or a model file (.safetensors with its .json card)")
    p.add_argument("--level", type=non_negative, default=None,
                   help="pyramid level of INPUT to predict (0: full; default: the level whose pixel size matches the "
                        "model's, else 0)")
    p.add_argument("--region", nargs=4, type=non_negative, metavar=("Y0", "Y1", "X0", "X1"),
                   help="predict only this rectangle (pixels of --level; of level 0 without --level)")
    p.add_argument("--tile", type=positive, default=None,
                   help="model input tile side in pixels (default: the model's own, from its card)")
    p.add_argument("--overlap", type=non_negative, default=None,
                   help="pixels between neighbouring tiles (default: the model's halo plus a cross-fade)")
    p.add_argument("--batch", type=positive, default=None,
                   help="tiles per model call (default: 2 on a CPU, 8 on an accelerator; halves on out-of-memory)")
    p.add_argument("--chunk", type=positive, default=None, help="output chunk side in pixels (default: 512)")
    p.add_argument("--block", type=positive, default=None,
                   help="output block side in pixels, a multiple of --chunk (default: about four tiles)")
    p.add_argument("--device", default=None, help="auto (the default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default=None, help="auto (the default), fp32, bf16 or fp16")
    p.add_argument("--probabilities", action="store_true", default=None, help="also store per-class probabilities")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT instead of refusing or resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive, metavar="N",
                       help="run on a local dask cluster of N worker processes")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on an existing dask cluster (e.g. tcp://host:8786); paths must be shared")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the command: 0 when the store is complete, 130 when interrupted (rerun to resume)."""
    from napari_hires.engine.runner import CancelToken

    cancel = CancelToken()
    options = dict(options=run_options(args), level=args.level, region=tuple(args.region) if args.region else None,
                   overwrite=args.overwrite, cancel=cancel)
    image = os.path.abspath(args.input)  # the same run record whether it runs here or on a cluster
    with _ProgressBar(enabled=not args.quiet) as bar, _cancel_on_interrupt(cancel):
        if args.workers or args.scheduler:
            from napari_hires.engine.distributed import predict_distributed

            _check_before_cluster(image, args.model)
            with _client(args.workers, args.scheduler) as client:
                result = predict_distributed(image, args.model, args.output, client=client, progress=bar, **options)
        else:
            from napari_hires.engine.predict import predict

            result = predict(image, args.model, args.output, progress=bar, **options)
    if result.cancelled:
        finished = result.blocks_done + result.blocks_skipped
        print(f"napari-hires predict: interrupted with {finished} of {result.blocks_total} blocks written to "
              f"{result.path}; run the same command again to resume", file=sys.stderr)
        return 130
    print(summary(result))
    return 0


def run_options(args: argparse.Namespace) -> Any:
    """The RunOptions of the command line: a flag left out (None) keeps the API's default."""
    from napari_hires.engine.options import RunOptions

    given = {name: getattr(args, name) for name in RunOptions.names() if getattr(args, name, None) is not None}
    return RunOptions.of(**given)


def summary(result: Any) -> str:
    """One line: pixels, seconds, throughput, tiles and overlap factor, blocks done/skipped, output path, and how
    the input was scaled unless it was the plain 8-bit case."""
    if not result.pixels:
        return (f"nothing left to predict: all {result.blocks_total} blocks were already written; "
                f"the store {result.path} is complete")
    return (f"predicted {result.pixels:,} pixels in {result.seconds:.1f} s ({result.megapixels_per_second:.2f} "
            f"megapixels/s), {result.tiles} tiles (k = {result.overlap_factor:.2f}), blocks: {result.blocks_done} "
            f"done, {result.blocks_skipped} skipped of {result.blocks_total} -> {result.path}"
            + result.scaling_note + result.resolution_words)


def _check_before_cluster(image: str, model: str) -> None:
    """Fail on a missing input or an unknown model name before spending seconds starting a cluster."""
    from napari_hires.models.files import WEIGHT_SUFFIXES
    from napari_hires.models.registry import model_entry

    for path in (image, model) if model.endswith(WEIGHT_SUFFIXES + (".json",)) else (image,):
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file or directory: {path}")
    if not os.path.exists(model):
        model_entry(model)


@contextlib.contextmanager
def _client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A dask Client on a fresh LocalCluster of ``workers`` processes, or on the scheduler at ``scheduler``."""
    from napari_hires.errors import HiresError, missing_extra

    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise missing_extra("distributed", "dask.distributed", "--workers or --scheduler") from err

    if workers:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with _ignoring_interrupts():  # worker processes inherit this: Ctrl-C in a terminal is the client's to handle
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                   dashboard_address=None)
        with cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        raise HiresError(f"cannot reach the dask scheduler at {scheduler} ({err}); check the address "
                         "(tcp://host:port) and that the scheduler is running") from None
    with client:
        yield client


@contextlib.contextmanager
def _ignoring_interrupts() -> Iterator[None]:
    """Ignore SIGINT while child processes start, so that they keep ignoring it (a terminal sends it to all)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class _ProgressBar:
    """A tqdm bar over blocks on stderr, fed by the engine's progress(done, total, box) from any thread."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.lock = enabled, None, threading.Lock()

    def __call__(self, done: int, total: int, box: Any) -> None:
        if not self.enabled:
            return
        with self.lock:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=done - 1, unit="block", desc="predict", file=sys.stderr,
                                dynamic_ncols=True)
            if done > self.bar.n:
                self.bar.update(done - self.bar.n)

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _cancel_on_interrupt(cancel: Any) -> Iterator[None]:
    """First Ctrl-C: stop after the blocks in flight (so the run can resume); a second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()
        print("\nnapari-hires predict: finishing the blocks in flight (Ctrl-C again to abort)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
