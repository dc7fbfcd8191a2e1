"""Preview benchmark: how soon the live restoration preview shows something, and when all of the view is done.

    .venv/bin/python benchmarks/preview.py                     # the shipped MAXIM denoiser, a 1400 x 900 view, CPU
    .venv/bin/python benchmarks/preview.py --view 1000 600 --reps 3 --device cuda

Each row is a fresh ``PreviewService`` (empty cache) asked for the same view of the noisy synthetic slide (rendered
once into memory, so that reading costs what it costs from a local store, not the renderer):
- cells: the cache's cell side: 256 px, or one tile stride (the service's default: each cell is one tile with its
  context);
- order: ``merged`` (cells merged into rectangles, one result at the end) or ``centre first`` (cell by cell from the
  centre of the view, each handed over as it lands: what the widget asks for);
- first s: request -> first (partial or final) result; all s: request -> final result; tiles: model tiles run.
Configurations alternate within each repetition (this machine's speed drifts); medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import dask.array as da

from napari_hires.engine import PreviewService, TileRunner, resolve_model
from napari_hires.engine.tiling import layout_for
from napari_hires.io.synthetic import synthetic_slide


def run(service_args: dict, box: tuple[int, int, int, int], centre_first: bool) -> tuple[float, float, int]:
    """(seconds to the first result, seconds to the final one, tiles run) of one request on a fresh service."""
    runner = service_args["runner"]
    tiles = [0]
    hook = runner.model.register_forward_pre_hook(lambda _m, args: tiles.__setitem__(0, tiles[0] + len(args[0])))
    firsts: list[float] = []
    try:
        with PreviewService(**service_args) as service:
            t0 = time.perf_counter()
            partial = (lambda _r: firsts.append(time.perf_counter() - t0)) if centre_first else None
            service.request(0, box, partial=partial).result(timeout=3600)
            total = time.perf_counter() - t0
    finally:
        hook.remove()
    return (firsts[0] if firsts else total), total, tiles[0]


def measure(model: str, view: tuple[int, int], device: str, reps: int, batch: int = 1) -> list[dict]:
    """One row per configuration (cells x order): medians of ``reps`` alternating runs on ``view`` (width,
    height) of the noisy synthetic slide, each on a fresh service sharing one runner."""
    width, height = view
    image, _ = synthetic_slide((2048, 2048), variant="noisy", chunk=512, min_size=512)
    image = image.with_levels([da.from_array(lv.compute(), chunks=(512, 512, 3)) for lv in image.levels])
    box = (300, 300 + height, 300, 300 + width)
    net = resolve_model(model)
    layout = layout_for(net)
    runner = TileRunner(net, device=device, batch=batch)  # batch 1: as the widget builds it on a CPU
    stride = layout.tile - layout.overlap
    configs = [(256, False), (256, True), (stride, False), (stride, True)]
    times: dict[tuple[int, bool], list[tuple[float, float, int]]] = {c: [] for c in configs}
    run(dict(runner=runner, pyramid=image, layout=layout), (0, 64, 0, 64), False)  # warm-up
    for _ in range(reps):
        for cell, centre_first in configs:
            times[cell, centre_first].append(
                run(dict(runner=runner, pyramid=image, layout=layout, cell=cell), box, centre_first))
    rows = []
    for (cell, centre_first), runs in times.items():
        first, total = (statistics.median(r[i] for r in runs) for i in (0, 1))
        rows.append(dict(cells=f"{cell} px" + (" (one tile stride)" if cell == stride else ""),
                         order="centre first" if centre_first else "merged", first=first, all=total,
                         tiles=runs[0][2], tile=layout.tile, overlap=layout.overlap, device=str(runner.device)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="maxim_nano_denoise_synthetic")
    parser.add_argument("--view", type=int, nargs=2, default=(1400, 900), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    rows = measure(args.model, tuple(args.view), args.device, args.reps, args.batch)
    print(f"model: {args.model} (tile {rows[0]['tile']}, overlap {rows[0]['overlap']}), view {args.view[0]} x "
          f"{args.view[1]} px at level 0, device {args.device}, batch {args.batch}, {args.reps} repetitions")
    print("\n| cells | order | first s | all s | tiles |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cells']} | {r['order']} | {r['first']:.2f} | {r['all']:.2f} | {r['tiles']} |")


if __name__ == "__main__":
    main()
