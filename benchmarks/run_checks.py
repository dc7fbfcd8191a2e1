"""What the safety checks of a run cost, against the run itself, in one process (issue 11: "nothing measurable").

    .venv/bin/python benchmarks/run_checks.py                 # 4096^2 prediction; listings of 64 to 65,536 chunks
    .venv/bin/python benchmarks/run_checks.py --side 2048 --reps 5

Rows, each the median of --reps:
- input identity (``io.job_identity.content_identity``) of the level read, on stores whose level 0 has 64 chunk
  files (the prediction's input, a 4096^2 synthetic slide in 512-px chunks), 1,024 (16384^2) and 65,536 (131072^2,
  the default synthetic slide): the listing's cost is one ``stat`` per chunk file, so the two big stores are made of
  placeholder chunk files (the identity reads no pixels, only names, sizes, times and four sampled files);
- output checks (``check_output`` + ``check_writable``) and taking then releasing the output lock;
- the prediction itself (``engine.predict`` of ``hct_tiny_seg_synthetic``, the fastest shipped model, so the
  checks' share is the largest it can be), into a fresh store each repetition.
The share column is each check's time over the time this run's prediction rate needs for the image it checks
(a 131072^2 slide's listing against predicting 131072^2 pixels), i.e. what the check adds to that run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import zarr

from napari_hires.engine import predict
from napari_hires.io.job_identity import content_identity
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.output_lock import lock_output
from napari_hires.io.output_path import check_output, check_writable
from napari_hires.io.readers import open_image
from napari_hires.io.synthetic import synthetic_slide

MODEL = "hct_tiny_seg_synthetic"


def median_ms(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def placeholder_store(path: Path, side: int, chunk: int = 512) -> zarr.Array:
    """A zarr v3 array of side^2 RGB whose every chunk file exists (64 placeholder bytes each), read as a level."""
    arr = zarr.create_array(str(path), shape=(side, side, 3), chunks=(chunk, chunk, 3), dtype="uint8",
                            fill_value=0, overwrite=True)
    meta = json.loads((path / "zarr.json").read_text())
    sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
    n = side // chunk
    for i in range(n):
        row = path / "c" / str(i) if sep == "/" else path
        row.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            name = f"{j}/0" if sep == "/" else f"c{sep}{i}{sep}{j}{sep}0"
            target = row / name
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(bytes(64))
    return arr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4096, help="side of the predicted image")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hires-run-checks-"))
    try:
        image = work / "input.zarr"
        write_ome_zarr(synthetic_slide((args.side, args.side))[0], image, chunk=512)
        level = open_image(image).levels[0]
        stores = {f"{args.side}^2 (the input)": (args.side, level, image)}
        for side in (16384, 131072):
            stores[f"{side}^2 placeholders"] = (side, placeholder_store(work / f"p{side}.zarr", side), None)

        out = work / "out.zarr"
        runs = []

        def run() -> None:
            shutil.rmtree(out, ignore_errors=True)
            runs.append(predict(image, MODEL, out, batch=4))

        run()  # warm: model, imports, page cache
        predict_ms = median_ms(run, args.reps)
        rows = []
        for name, (side, array, path) in stores.items():
            files = sum(a["chunks"]["count"] for a in content_identity(array)["arrays"])
            ms = median_ms(lambda: content_identity(array, path), args.reps)
            rows.append((f"input identity, {name}", files, ms, side))
        rows.append(("output checks (not the input, writable)", None,
                     median_ms(lambda: (check_output(out, [str(image)]), check_writable(out)), args.reps), args.side))
        rows.append(("output lock, take and release", None, median_ms(lambda: lock_output(out).release(), args.reps),
                     args.side))

        print(f"prediction: {MODEL}, {args.side}^2, {runs[-1].tiles} tiles, median {predict_ms / 1e3:.2f} s "
              f"of {args.reps} ({runs[-1].megapixels_per_second:.1f} Mpx/s)\n")
        print("| check | chunk files | ms | share of predicting that image at this rate |")
        print("|---|---|---|---|")
        for name, files, ms, side in rows:
            share = ms / (predict_ms * side**2 / args.side**2)
            print(f"| {name} | {files if files is not None else ''} | {ms:.2f} | {share:.5%} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
