"""The GPU rows of the inference, preview and training benchmarks, as JSON lines for benchmarks/gpu_summary.py.

    python benchmarks/gpu_rows.py inference --device cuda --rows rows.jsonl --deadline EPOCH_SECONDS
    python benchmarks/gpu_rows.py preview|training|runner ...      (benchmarks/gpu_check.sh runs all four)

Parts, each reusing its benchmark's own functions (inference.py, preview.py, training.py):
- inference: per model, the model-only rate (``pure_rate``) in fp32, bf16 and fp16 autocast, channels-last against
  plain NCHW, and the whole ``predict`` call zarr to zarr (``run_ours``) at the engine's defaults;
- runner: host-to-device input copies through ``TileRunner.to_input`` (pinned, non-blocking) against a plain
  pageable copy, and a batch that runs out of device memory halving until it fits;
- preview: ``preview.measure`` (first and final result of a view);
- training: ``training.run`` per shipped configuration (step time, peak device memory; autocast on CUDA).
Every row is written as soon as it is measured; a row that fails is written with its error; rows that would start
after ``--deadline`` are written as skipped, so that the table always comes out. ``--device cpu`` runs tiny sizes
(a smoke test of this script, not a measure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

#: Sizes per device kind: a GPU run of all parts takes about 5 minutes; the CPU's are a smoke test.
SIZES = {
    "cuda": dict(models=["unet_1m", "hct_tiny_seg_synthetic", "maxvit_nano_seg_synthetic", "xt_nano_seg_synthetic",
                         "maxim_nano_denoise_synthetic"], side=4096, batch=8, budget=1.0, copy_batch=16,
                 preview_view=(1400, 900), preview_batch=4, preview_reps=2,
                 train_configs=None, train_tile=256, train_batch=8, train_steps=8),
    "cpu": dict(models=["unet_1m", "hct_tiny_seg_synthetic"], side=512, batch=2, budget=0.2, copy_batch=2,
                preview_view=(160, 96), preview_batch=1, preview_reps=1,
                train_configs=["hct_tiny_seg", "maxim_nano (1 stage of 8 features)"], train_tile=64, train_batch=2,
                train_steps=3),
}


class Rows:
    """Appends rows to a JSON-lines file, and skips the work of rows that would start after the deadline."""

    def __init__(self, path: Path, part: str, deadline: float) -> None:
        self.path, self.part, self.deadline = path, part, deadline

    def write(self, row: str, setting: str, value: float | None, unit: str, note: str = "") -> None:
        line = dict(part=self.part, row=row, setting=setting, value=value, unit=unit, note=note)
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)

    def measure(self, row: str, setting: str, unit: str, work: Callable[[], tuple[float, str] | float]) -> None:
        """Run ``work`` (its value, or (value, note)) and write its row; past the deadline or on an error, write
        why instead."""
        if time.time() > self.deadline:
            self.write(row, setting, None, unit, "skipped: time budget spent")
            return
        try:
            result = work()
        except Exception as err:  # a row that fails is reported, the others still run
            traceback.print_exc()
            self.write(row, setting, None, unit, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            return
        value, note = result if isinstance(result, tuple) else (result, "")
        self.write(row, setting, value, unit, note)


# ---------------------------------------------------------------------------------------------------- parts


def inference_part(rows: Rows, device: str, size: dict) -> None:
    import shutil

    from inference import CACHE, make_model, pure_rate, run_ours, slide_store

    from napari_hires.engine.tiling import layout_for

    side, batch, budget = size["side"], size["batch"], size["budget"]
    for name in size["models"]:
        net = make_model(name)
        tile = layout_for(net).tile
        for precision in ("fp32", "bf16", "fp16"):
            rows.measure(f"{name} model only", f"{precision}, {tile} px x {batch}", "Mpx/s",
                         lambda: pure_rate(net, tile, batch, device, budget, precision) / 1e6)
        rows.measure(f"{name} model only", f"auto precision, plain NCHW {tile} px x {batch}", "Mpx/s",
                     lambda: pure_rate(net, tile, batch, device, budget, "auto", channels_last=False) / 1e6)
        rows.measure(f"{name} model only", f"auto precision, channels-last {tile} px x {batch}", "Mpx/s",
                     lambda: pure_rate(net, tile, batch, device, budget, "auto") / 1e6)

        def end_to_end() -> tuple[float, str]:
            out = CACHE / "gpu_out.zarr"
            seconds, result, _ = run_ours(slide_store(side), net, None, batch, device, out)
            shutil.rmtree(out, ignore_errors=True)
            return side * side / seconds / 1e6, f"{seconds:.1f} s, k {result.overlap_factor:.2f}"

        rows.measure(f"{name} predict zarr -> zarr", f"{side}^2, auto precision, batch {batch}", "Mpx/s", end_to_end)


def runner_part(rows: Rows, device: str, size: dict) -> None:
    from inference import UNet1M, make_model

    from napari_hires.engine.runner import TileRunner

    dev = torch.device(device)
    runner = TileRunner(make_model("unet_1m"), device=device)
    tiles = np.random.default_rng(0).integers(0, 256, (size["copy_batch"], 512, 512, 3), dtype=np.uint8)

    def rate(copy: Callable[[], torch.Tensor]) -> float:
        copy()  # warm-up (the pinned pool's first block)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            copy()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return tiles.nbytes / statistics.median(times) / 1e9

    setting = f"{size['copy_batch']} x 512^2 x 3 uint8 tiles"
    rows.measure("input copy: TileRunner.to_input (pinned, non-blocking, normalised)", setting, "GB/s of uint8",
                 lambda: rate(lambda: runner.to_input(tiles)))
    rows.measure("input copy: plain pageable torch .to(device)", setting, "GB/s of uint8",
                 lambda: (rate(lambda: torch.from_numpy(tiles).to(dev)), "" if dev.type == "cuda" else "cpu: no copy"))
    if dev.type != "cuda":
        rows.write("channels-last on the device", "cpu", None, "yes=1", "skipped: channels-last is for CUDA")
        rows.write("out-of-memory batch halving", "cpu", None, "s", "skipped: needs a CUDA device")
        return
    rows.measure("channels-last on the device", "model weights and to_input tiles", "yes=1",
                 lambda: float(runner.model.down[0][0].weight.is_contiguous(memory_format=torch.channels_last)
                               and runner.to_input(tiles[:1]).is_contiguous(memory_format=torch.channels_last)))

    class Greedy(UNet1M):
        """The U-Net, whose forward on CUDA also takes 60 % of the device's free memory (read once) per tile: two
        tiles or more run out of memory on any GPU, one fits."""

        per_tile = int(torch.cuda.mem_get_info()[0] * 0.6)

        def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
            if x.is_cuda:  # not in the receptive-field probe that UNet1M runs on the CPU when it is built
                scratch = torch.empty(x.shape[0] * self.per_tile, dtype=torch.uint8, device=x.device)
                del scratch
            return super().forward_padded(x)

    def out_of_memory() -> tuple[float, str]:
        greedy = TileRunner(Greedy().eval(), device=device, batch=8)
        t0 = time.perf_counter()
        greedy.run_batch(tiles[:8])
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        torch.cuda.empty_cache()
        return seconds, f"batch 8 -> {greedy.batch}, all 8 tiles done"

    rows.measure("out-of-memory batch halving", "8 tiles of 512^2, each taking 60 % of free memory", "s",
                 out_of_memory)


def preview_part(rows: Rows, device: str, size: dict) -> None:
    from preview import measure

    if time.time() > rows.deadline:
        rows.write("preview", "all", None, "s", "skipped: time budget spent")
        return
    view = size["preview_view"]
    try:
        results = measure("maxim_nano_denoise_synthetic", view, device, size["preview_reps"], size["preview_batch"])
    except Exception as err:
        traceback.print_exc()
        rows.write("preview", "all", None, "s", f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
        return
    for r in results:
        setting = f"{view[0]} x {view[1]} view, batch {size['preview_batch']}, {r['cells']}, {r['order']}"
        rows.write("preview maxim_nano_denoise_synthetic: first result", setting, r["first"], "s",
                   f"all of the view {r['all']:.2f} s, {r['tiles']} tiles")


def training_part(rows: Rows, device: str, size: dict) -> None:
    from training import CONFIGS, run

    tile, batch, steps = size["train_tile"], size["train_batch"], size["train_steps"]

    def one(name: str) -> tuple[float, str]:
        try:
            r = run(name, tile, batch, steps, device)
        except SystemExit as failed:  # training.run exits with the child's error
            raise RuntimeError(str(failed).splitlines()[-1]) from None
        return r["step"], (f"{batch * tile * tile / r['step'] / 1e6:.2f} Mpx/s, train/infer "
                           f"{r['step'] / r['infer']:.1f}, peak {r['peak'] / 2**20:,.0f} MB")

    for name in size["train_configs"] or list(CONFIGS):
        rows.measure(f"train {name}", f"{tile} px x {batch}, {steps} steps", "s/step", lambda: one(name))


PARTS = {"inference": inference_part, "runner": runner_part, "preview": preview_part, "training": training_part}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=list(PARTS))
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--rows", type=Path, required=True, help="JSON-lines file the rows are appended to")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="epoch seconds: start no row after")
    args = parser.parse_args()
    PARTS[args.part](Rows(args.rows, args.part, args.deadline), args.device, SIZES[args.device])


if __name__ == "__main__":
    main()
