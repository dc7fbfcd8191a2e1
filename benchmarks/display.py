"""Display benchmark: time to first rendered frame and resident memory, napari-hires reader vs napari-ome-zarr.

Both readers open the same OME-Zarr store (written once by ``napari-hires synth``, cached) in fresh processes,
interleaved, so that machine drift hits both alike. Run under a display (``xvfb-run -a``)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/display.py --size 32768 32768 --repeats 3

Columns: open = from ``viewer.open`` to the layer in the viewer; first frame = from ``viewer.open`` to the first
rendered canvas that is not blank; RSS = resident memory after the first frame minus before opening; peak RSS = the
process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

READERS = {"napari-hires": "napari-hires", "napari-ome-zarr": "napari-ome-zarr"}


def measure(plugin: str, store: str) -> dict[str, float]:
    """In this process: open ``store`` with ``plugin`` in a shown viewer and time the first non-blank frame."""
    import resource

    import napari
    import numpy as np
    import psutil
    from qtpy.QtWidgets import QApplication

    proc = psutil.Process()
    viewer = napari.Viewer(show=True)
    for _ in range(5):
        QApplication.processEvents()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    viewer.open(store, plugin=plugin)
    t_open = time.perf_counter() - t0
    frame = viewer.screenshot(canvas_only=True, flash=False)
    while np.ptp(frame[..., :3]) == 0 and time.perf_counter() - t0 < 120:
        QApplication.processEvents()
        frame = viewer.screenshot(canvas_only=True, flash=False)
    t_frame = time.perf_counter() - t0
    rss = proc.memory_info().rss - rss0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    viewer.close()
    return {"open_s": t_open, "frame_s": t_frame, "rss_mb": rss / 2**20, "peak_mb": peak / 2**20}


def ensure_store(path: Path, size: tuple[int, int]) -> Path:
    """Write the synthetic slide of ``size`` to ``path`` once; reuse it afterwards."""
    if (path / "zarr.json").exists():
        from napari_hires.io.readers import open_image

        open_image(path)  # refuses a store whose writing was interrupted
        return path
    from napari_hires.io.ome_zarr_writer import write_ome_zarr
    from napari_hires.io.synthetic import synthetic_slide

    image, _ = synthetic_slide(size)
    print(f"writing a {size[0]}x{size[1]} synthetic slide to {path} (once) ...", file=sys.stderr)
    # level 0 rendered, coarser levels mean-downsampled from it: the store is what a scanner pipeline would give
    write_ome_zarr(image.with_levels(image.levels[:1]), path, derive_levels=True, progress=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", nargs=2, type=int, default=(32768, 32768), metavar=("H", "W"))
    parser.add_argument("--store", type=Path, help="an existing OME-Zarr store (default: a cached synthetic slide)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("PLUGIN", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(measure(*args.worker)))
        return

    store = args.store or ensure_store(
        Path(os.environ.get("TMPDIR", "/tmp")) / f"napari-hires-bench-{args.size[0]}x{args.size[1]}.zarr",
        tuple(args.size),
    )
    results: dict[str, list[dict[str, float]]] = {name: [] for name in READERS}
    for _ in range(args.repeats):
        for name, plugin in READERS.items():  # interleaved: drift affects both readers alike
            out = subprocess.run(
                [sys.executable, __file__, "--worker", plugin, str(store)],
                capture_output=True, text=True, check=False,
            )
            if out.returncode != 0:
                sys.exit(f"{name} failed:\n{out.stderr[-2000:]}")
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    pixels = args.size[0] * args.size[1] if not args.store else None
    print(f"\nstore: {store}" + (f" ({pixels / 1e9:.2f} gigapixels)" if pixels else "") + f", median of {args.repeats}")
    print("| reader | open (s) | first frame (s) | RSS after frame (MB) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for name in READERS:
        print(f"| {name} | {med(name, 'open_s'):.2f} | {med(name, 'frame_s'):.2f} | "
              f"{med(name, 'rss_mb'):.0f} | {med(name, 'peak_mb'):.0f} |")
    ours, theirs = READERS
    print(f"| ratio {ours} / {theirs} | {med(ours, 'open_s') / med(theirs, 'open_s'):.2f} | "
          f"{med(ours, 'frame_s') / med(theirs, 'frame_s'):.2f} | "
          f"{med(ours, 'rss_mb') / max(med(theirs, 'rss_mb'), 1e-9):.2f} | "
          f"{med(ours, 'peak_mb') / med(theirs, 'peak_mb'):.2f} |")


if __name__ == "__main__":
    main()
