"""Before/after: ``engine.predict`` of this tree against another git revision, interleaved in one run.

    .venv/bin/python benchmarks/compare_revisions.py --against c71de86
    .venv/bin/python benchmarks/compare_revisions.py --against main --models hct_tiny_seg_synthetic --size 2048 --reps 5

The other revision is checked out (``git worktree add --detach``) into a temporary folder and removed afterwards.
Each repetition runs the two trees one after the other, in alternating order, each in a fresh subprocess with its
own ``src/`` first on the path (after one uncounted warm-up of each), on the same synthetic slide (written once as OME-Zarr) and the same public call,
``predict(store, model, out, device=..., overwrite=True)`` (with ``batch`` when ``--batch`` is given), timed inside the child (imports excluded). The table
gives the medians, after / before, and the machine's noise: the largest spread (max / min) of one tree's own
repetitions. A row is slower only where its ratio exceeds that noise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
MODELS = ["hct_tiny_seg_synthetic", "maxvit_nano_seg_synthetic", "xt_nano_seg_synthetic",
          "maxim_nano_denoise_synthetic"]

#: The timed child: one predict call through the public API of whichever tree is first on the path.
CHILD = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
import napari_hires
from napari_hires.engine import predict
store, model, out, device, batch = sys.argv[1:6]
settings = dict(batch=int(batch)) if int(batch) else {}  # 0: the tree's own default
t0 = time.perf_counter()
result = predict(store, model, out, device=device, overwrite=True, **settings)
seconds = time.perf_counter() - t0
print(json.dumps(dict(seconds=seconds, k=result.overlap_factor, blocks=result.blocks_total,
                      tree=napari_hires.__file__)))
"""


def slide(side: int, folder: Path) -> Path:
    """The synthetic slide (side x side) as OME-Zarr, written by this tree."""
    from napari_hires.io.ome_zarr_writer import write_ome_zarr
    from napari_hires.io.synthetic import synthetic_slide

    path = folder / f"slide_{side}.zarr"
    image, _ = synthetic_slide((side, side))
    write_ome_zarr(image, path, labels=None, overwrite=True, progress=False)
    return path


def run_child(src: Path, store: Path, model: str, out: Path, device: str, batch: int, threads: int | None) -> dict:
    """One timed predict in a fresh interpreter importing napari_hires from ``src``."""
    env = dict(os.environ, PYTHONPATH=str(src))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(store), model, str(out), device, str(batch)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"the child for {src} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    if not row["tree"].startswith(str(src)):
        raise SystemExit(f"the child imported napari_hires from {row['tree']}, not from {src}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the git revision to compare with (e.g. main, c71de86)")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated registry names")
    parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=0, help="tiles per batch in both trees (0: each tree's default)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the children")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hires-revisions-"))
    other = work / "other"
    subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "-q", str(other), args.against],
                   check=True)
    try:
        rev = subprocess.run(["git", "-C", str(other), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        store = slide(args.size, work)
        trees = {"before": other / "src", "after": HERE / "src"}
        print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
        print(f"before: {args.against} ({rev}); after: this tree; slide {args.size}^2, device {args.device}, "
              f"{args.reps} interleaved repetitions, batch {args.batch or 'each tree default'}")
        rows = []
        for model in [m for m in args.models.split(",") if m]:
            times: dict[str, list[float]] = {"before": [], "after": []}
            for rep in range(args.reps + 1):  # repetition 0 warms the file cache and is not counted
                order = ("before", "after") if rep % 2 == 0 else ("after", "before")
                for which in order:
                    row = run_child(trees[which], store, model, work / "out.zarr", args.device, args.batch,
                                    args.threads)
                    if rep:
                        times[which].append(row["seconds"])
                    print(json.dumps(dict(model=model, which=which, **row)), file=sys.stderr, flush=True)
            before, after = statistics.median(times["before"]), statistics.median(times["after"])
            noise = max(max(t) / min(t) for t in times.values())
            rows.append((model, before, after, after / before, noise))
        print(f"\n{'model':32} {'before s':>9} {'after s':>9} {'after/before':>13} {'noise':>7}  verdict")
        for model, before, after, ratio, noise in rows:
            verdict = "slower" if ratio > noise else "same within noise" if ratio >= 1 / noise else "faster"
            print(f"{model:32} {before:9.2f} {after:9.2f} {ratio:13.3f} {noise:7.3f}  {verdict}")
    finally:
        subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(other)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
