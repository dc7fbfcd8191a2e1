"""Inference benchmark: pipeline efficiency, overlap factor and the peer ratio against MONAI (DESIGN.md, "Measures").

    .venv/bin/python benchmarks/inference.py                          # every small model + a 1M-parameter U-Net
    .venv/bin/python benchmarks/inference.py --models unet_1m --size 2048 --reps 3
    .venv/bin/python benchmarks/inference.py --memory-gp 1 4          # the issue's 1 and 4 gigapixel memory rows
    .venv/bin/python benchmarks/inference.py --against c71de86        # this tree's predict against a revision's

Speed rows, per model, on the synthetic slide written once as OME-Zarr under $TMPDIR/napari_hires_bench:
- pure: model tile pixels/s on in-memory random tiles (same tile, batch, device, dtype; inference_mode); where our
  tiles may stretch to fit blocks (models that tile exactly, "512-640"), pure is timed at the set tile;
- ours: ``engine.predict`` from the zarr store into a zarr store with its pyramid, the whole call;
  k = input-tile pixels / image pixels counted from the tiles actually run; eta = ours px/s / (pure / k);
  model share = the model's forward time inside that same call / the call's time (CPU only, where a forward is
  synchronous): eta times pure and ours minutes apart, so this machine's drift moves it by 10-20 %, the share not;
- MONAI: ``sliding_window_inference`` (mode="gaussian", so that it has no seams either) on the same model, fed
  its windows channels-last as our tiles are (on this CPU that alone makes a conv net twice as fast), softmax
  included (we blend probabilities too), on the image read from the same store into memory; its time is
  read + normalise + infer + argmax (it writes nothing); ``read`` is shown separately. Runs alternate
  ours, MONAI at 0.25 (its default overlap), MONAI at our overlap fraction; medians are reported.
Memory rows: peak resident memory (ru_maxrss of a fresh subprocess per measurement) of ``engine.predict`` with a
1x1-convolution model (the pipeline's memory, not a model's) on generated inputs, and of MONAI on smaller ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import dask.array as da
import numpy as np
import torch
from torch import nn

from napari_hires.engine import predict
from napari_hires.engine.device import autocast, resolve_device
from napari_hires.engine.runner import TileRunner
from napari_hires.engine.tiling import layout_for
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.readers import open_image
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import count_parameters, create_model
from napari_hires.models.base import HiresModel

CACHE = Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "napari_hires_bench"
#: A plain U-Net (exact halo from its receptive field) and the shipped trained models (halos measured, in their cards).
MODELS = ["unet_1m", "hct_tiny_seg_synthetic", "maxvit_nano_seg_synthetic", "xt_nano_seg_synthetic",
          "maxim_nano_denoise_synthetic"]
#: Image side per model: large enough that a run's fixed costs and the tile count's rounding at the image
#: edge do not decide the ratios (2048 px fits five 512-px tiles at 19 % overlap and at 25 % alike); a
#: default run takes about 40 minutes on a 2-core CPU (--size overrides).
DEFAULT_SIDE = {"unet_1m": 4096, "hct_tiny_seg_synthetic": 4096, "maxvit_nano_seg_synthetic": 4096,
                "xt_nano_seg_synthetic": 4096, "maxim_nano_denoise_synthetic": 3072}
GIGA = 2**30


# ---------------------------------------------------------------------------------------------------- models


class UNet1M(HiresModel):
    """A plain 4-level conv U-Net (~1M parameters); its halo is half its measured receptive field."""

    task = "segmentation"
    in_channels = 3
    out_channels = 4
    input_multiple = 8

    def __init__(self, widths: tuple[int, ...] = (24, 48, 96, 192)) -> None:
        super().__init__()

        def double(a: int, b: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(b, b, 3, padding=1), nn.ReLU(inplace=True))

        self.down = nn.ModuleList([double(a, b) for a, b in zip((3, *widths[:-1]), widths)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(b, a, 2, stride=2) for a, b in zip(widths[:-1], widths[1:])])
        self.merge = nn.ModuleList([double(2 * a, a) for a in widths[:-1]])
        self.head = nn.Conv2d(widths[0], self.out_channels, 1)
        self.receptive_field = receptive_field(self)
        self.halo = self.receptive_field // 2

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(reversed(self.up), reversed(self.merge), reversed(skips[:-1])):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class Pointwise(HiresModel):
    """A 1x1 convolution: no context, almost no compute, so that a run measures the pipeline's own memory."""

    task = "segmentation"
    in_channels = 3
    out_channels = 2
    tile_size = 1024

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def receptive_field(net: nn.Module, side: int = 256) -> int:
    """Width in pixels of the input that one central output pixel depends on (non-zero input gradient)."""
    x = torch.zeros(1, 3, side, side, requires_grad=True)
    with torch.enable_grad():
        net.forward_padded(x)[0, :, side // 2, side // 2].sum().backward()
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2)))
    return int(cols.max() - cols.min() + 1)


def make_model(name: str) -> HiresModel:
    torch.manual_seed(0)
    return UNet1M().eval() if name == "unet_1m" else create_model(name).eval()


# ---------------------------------------------------------------------------------------------------- inputs


def slide_store(side: int) -> Path:
    """The synthetic slide (side x side, RGB uint8) as OME-Zarr with its pyramid, written once and cached."""
    path = CACHE / f"slide_{side}.zarr"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        image, _ = synthetic_slide((side, side))
        part = CACHE / f"slide_{side}.partial.zarr"
        write_ome_zarr(Pyramid(image.levels[:1], image.axes, image.scale, image.translation, name=image.name,
                               channel_names=image.channel_names), part, derive_levels=True, overwrite=True)
        part.rename(path)
    return path


def texture(side: int, chunk: int = 1024) -> Pyramid:
    """A cheap generated RGB uint8 texture of side x side pixels (dask, chunk by chunk): for the memory rows."""

    def block(block_info: Any = None) -> np.ndarray:
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        y = np.arange(y0, y1, dtype=np.uint32)[:, None]
        x = np.arange(x0, x1, dtype=np.uint32)[None, :]
        v = ((x * 7 + y * 3) ^ ((x * y) >> 6)).astype(np.uint8)
        return np.stack([v, v ^ 0x55, v >> 1], axis=-1)

    n = -(-side // chunk)
    chunks = tuple(min(chunk, side - i * chunk) for i in range(n))
    level = da.map_blocks(block, dtype=np.uint8, chunks=(chunks, chunks, (3,)))
    return Pyramid([level], "yxc", (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), name=f"texture{side}")


def read_yxc(pyr: Pyramid) -> np.ndarray:
    """Level 0 of ``pyr`` in memory as (y, x, c): what MONAI needs before it starts."""
    level = pyr.levels[0]
    order = [pyr.axes.index(a) for a in "yxc"]
    return np.ascontiguousarray(np.transpose(np.asarray(level.compute()), order))


# ---------------------------------------------------------------------------------------------------- measures


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pure_rate(net: HiresModel, tile: int, batch: int, device: str, budget_s: float = 4.0, precision: str = "auto",
              channels_last: bool = True) -> float:
    """Model-only tile pixels/s on random in-memory tiles already on the device (median of timed batches);
    ``channels_last=False`` times the model and tiles as plain NCHW (what the runner does on CUDA is channels-last)."""
    runner = TileRunner(net, device=device, batch=batch, precision=precision)
    rng = np.random.default_rng(0)
    x = runner.to_input(rng.integers(0, 256, (batch, tile, tile, net.in_channels), dtype=np.uint8))
    if not channels_last:
        runner.model.to(memory_format=torch.contiguous_format)
        x = x.contiguous()
    times: list[float] = []
    with torch.inference_mode(), autocast(runner.device, runner.amp_dtype):
        runner.model(x)  # warm-up
        sync(runner.device)
        while len(times) < 3 or (sum(times) < budget_s and len(times) < 20):
            t0 = time.perf_counter()
            runner.model(x)
            sync(runner.device)
            times.append(time.perf_counter() - t0)
    return batch * tile * tile / statistics.median(times)


def run_ours(path: Path, net: HiresModel, tile: int | None, batch: int, device: str,
             out: Path) -> tuple[float, Any, float]:
    """The whole ``predict`` call, zarr to zarr with the pyramid; ``tile`` None is the engine's own choice.

    Returns (seconds, result, seconds spent in the model's forward during the call: NaN off the CPU, where a
    forward returns before the device is done)."""
    spent, began = [0.0], [0.0]
    timed = resolve_device(device).type == "cpu"
    hooks = [net.register_forward_pre_hook(lambda *_: began.__setitem__(0, time.perf_counter())),
             net.register_forward_hook(lambda *_: spent.__setitem__(0, spent[0] + time.perf_counter() - began[0]))
             ] if timed else []
    try:
        t0 = time.perf_counter()
        result = predict(str(path), net, out, tile=tile, batch=batch, device=device, overwrite=True)
        seconds = time.perf_counter() - t0
    finally:
        for hook in hooks:
            hook.remove()
    return seconds, result, spent[0] if timed else float("nan")


def run_monai(path: Path, net: HiresModel, tile: int, batch: int, device: str, overlap: float) -> tuple[float, float]:
    """(total seconds, of which reading into memory + normalising) of MONAI's sliding window over the image."""
    from monai.inferers import sliding_window_inference

    runner = TileRunner(net, device=device, batch=batch)
    t0 = time.perf_counter()
    x = runner.to_input(read_yxc(open_image(str(path)))[None])
    sync(runner.device)
    t_read = time.perf_counter() - t0
    def model(t: torch.Tensor) -> torch.Tensor:  # the windows in the memory format our tiles have (channels-last):
        return runner.model(t.contiguous(memory_format=torch.channels_last))  # same model speed in both tools

    predictor: Callable[[torch.Tensor], torch.Tensor] = (
        (lambda t: torch.softmax(model(t).float(), 1)) if net.task == "segmentation" else model)
    with torch.inference_mode(), autocast(runner.device, runner.amp_dtype):
        out = sliding_window_inference(x, (tile, tile), batch, predictor, overlap=overlap, mode="gaussian")
    if net.task == "segmentation":
        out.argmax(1).to(torch.uint8).cpu().numpy()
    else:
        out.clamp(-1e4, 1e4).cpu().numpy()
    return time.perf_counter() - t0, t_read


def monai_windows(length: int, roi: int, overlap: float) -> int:
    """Windows MONAI's sliding window places along one axis (its scan interval is int(roi * (1 - overlap)))."""
    interval = max(int(roi * (1 - overlap)), 1)
    return 1 if length <= roi else math.ceil((length - roi) / interval) + 1


def speed_row(name: str, side: int | None, tile: int | None, batch: int, device: str, reps: int) -> dict:
    net = make_model(name)
    side = side or DEFAULT_SIDE.get(name, 2048)
    layout = layout_for(net, tile)  # tile None: the model's tile, which may stretch to fit blocks
    path = slide_store(side)
    out = CACHE / "out.zarr"
    ours, monai_default, monai_equal, reads, pures, shares = [], [], [], [], [], []
    k = float("nan")
    for _ in range(reps):  # interleaved, the model-only rate too: the machine's speed drifts between runs
        pures.append(pure_rate(net, layout.tile, batch, device))
        seconds, result, model_seconds = run_ours(path, net, tile, batch, device, out)
        ours.append(seconds)
        shares.append(model_seconds / seconds)
        k = result.overlap_factor
        seconds, read = run_monai(path, net, layout.tile, batch, device, 0.25)
        monai_default.append(seconds)
        reads.append(read)
        seconds, read = run_monai(path, net, layout.tile, batch, device, layout.overlap / layout.tile)
        monai_equal.append(seconds)
        reads.append(read)
    shutil.rmtree(out, ignore_errors=True)
    t_ours, t_m25, t_meq, pure = (statistics.median(v) for v in (ours, monai_default, monai_equal, pures))
    monai_k = monai_windows(side, layout.tile, 0.25) ** 2 * layout.tile ** 2 / side ** 2
    e2e = side * side / t_ours
    return dict(model=name, params=count_parameters(net), side=side, tile=layout.tile, max_tile=layout.max_tile,
                batch=batch, halo=net.halo, overlap=layout.overlap, k=k, monai_k=monai_k, pure=pure, e2e=e2e,
                eta=e2e / (pure / k), share=statistics.median(shares), ours=t_ours, monai25=t_m25, monai_eq=t_meq, read=statistics.median(reads), runs=dict(ours=ours, monai25=monai_default,
                                                                         monai_eq=monai_equal, pure=pures))


# ---------------------------------------------------------------------------------------------------- memory


def memory_child(tool: str, side: int, tile: int, device: str) -> None:
    """In a fresh process: run one tool on a generated side x side image and print its memory as JSON."""
    import psutil

    net = Pointwise().eval()
    image = texture(side)
    baseline = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    if tool == "ours":
        out = CACHE / f"memory_{side}.zarr"
        predict(image, net, out, tile=tile, batch=4, device=device, overwrite=True)
        shutil.rmtree(out, ignore_errors=True)
    else:
        run_monai_array(image, net, tile, device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps(dict(peak=peak, baseline=baseline, seconds=time.perf_counter() - t0)))


def run_monai_array(image: Pyramid, net: HiresModel, tile: int, device: str) -> None:
    from monai.inferers import sliding_window_inference

    runner = TileRunner(net, device=device, batch=4)
    x = runner.to_input(read_yxc(image)[None])
    with torch.inference_mode():
        out = sliding_window_inference(x, (tile, tile), 4, lambda t: torch.softmax(runner.model(t), 1),
                                       overlap=0.25, mode="gaussian")
        out.argmax(1).to(torch.uint8).cpu().numpy()


def measure_memory(tool: str, side: int, tile: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", tool, "--child-side", str(side), "--tile", str(tile),
           "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(tool=tool, side=side, **json.loads(proc.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------------- report


def fmt_rate(v: float) -> str:
    return f"{v / 1e3:,.0f}k" if v < 1e6 else f"{v / 1e6:,.2f}M"


def print_speed(rows: list[dict]) -> None:
    print("\n| model | params | image | tile x batch | halo / overlap | k (MONAI@0.25) | pure tile px/s "
          "| end-to-end px/s | eta | model share | ours s | MONAI@0.25 s | ours/MONAI@0.25 | MONAI@equal s | ours/MONAI@equal "
          "| MONAI read s |")
    print("|" + "---|" * 16)
    for r in rows:
        stretch = f"-{r['max_tile']}" if r["max_tile"] > r["tile"] else ""
        print(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['side']}^2 | {r['tile']}{stretch} x {r['batch']} "
              f"| {r['halo']} / {r['overlap']} ({r['overlap'] / r['tile']:.0%}) | {r['k']:.2f} ({r['monai_k']:.2f}) "
              f"| {fmt_rate(r['pure'])} "
              f"| {fmt_rate(r['e2e'])} | {r['eta']:.2f} | {r['share']:.2f} | {r['ours']:.1f} | {r['monai25']:.1f} "
              f"| {r['ours'] / r['monai25']:.2f} | {r['monai_eq']:.1f} | {r['ours'] / r['monai_eq']:.2f} "
              f"| {r['read']:.2f} |")


def print_memory(rows: list[dict]) -> None:
    print("\n| tool (1x1-conv model) | image | peak RSS GB | above start GB | bytes/pixel above start | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        px = r["side"] ** 2
        above = r["peak"] - r["baseline"]
        print(f"| {r['tool']} | {px / GIGA:.3g} GP ({r['side']}^2) | {r['peak'] / 1e9:.2f} | {above / 1e9:.2f} "
              f"| {above / px:.2f} | {r['seconds']:.0f} |")
    ours = [r for r in rows if r["tool"] == "ours"]
    monai = [r for r in rows if r["tool"] == "monai"]
    if len(ours) >= 2:
        print(f"\nours: peak RSS {ours[-1]['side'] ** 2 / GIGA:.3g} GP / {ours[0]['side'] ** 2 / GIGA:.3g} GP = "
              f"{ours[-1]['peak'] / ours[0]['peak']:.3f} (goal: within 10%)")
    if len(monai) >= 2:
        per_px = (monai[-1]["peak"] - monai[0]["peak"]) / (monai[-1]["side"] ** 2 - monai[0]["side"] ** 2)
        print(f"MONAI: peak RSS x{monai[-1]['peak'] / monai[0]['peak']:.2f} for x"
              f"{monai[-1]['side'] ** 2 / monai[0]['side'] ** 2:.0f} pixels; growth {per_px:.1f} bytes/pixel, "
              f"so about {monai[0]['peak'] / 1e9 + per_px * (GIGA - monai[0]['side'] ** 2) / 1e9:.0f} GB at 1 GP")


def machine(device: str) -> str:
    import psutil

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    return (f"{platform.node()}: {psutil.cpu_count(logical=True)} logical cores, "
            f"{psutil.virtual_memory().total / 1e9:.0f} GB, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, device {dev} ({name}), load average "
            f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: unet_1m and registry names")
    parser.add_argument("--size", type=int, default=None, help="image side for the speed rows (default per model)")
    parser.add_argument("--tile", type=int, default=None, help="default: the model's tile_size (memory rows: 1024)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reps", type=int, default=2, help="interleaved repetitions per speed row")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--memory-gp", type=float, nargs="*", default=[1 / 16, 1 / 4],
                        help="input sizes in gigapixels for our memory rows (the issue asks for 1 4: about "
                             "15 and 60 minutes on a 2-core CPU)")
    parser.add_argument("--monai-mp", type=float, nargs="*", default=[64, 256],
                        help="input sizes in megapixels for MONAI's memory rows")
    parser.add_argument("--against", metavar="REV", help="compare this tree's predict with git revision REV, "
                        "interleaved (benchmarks/compare_revisions.py; --models, --size, --reps, --device apply)")
    parser.add_argument("--child", choices=["ours", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--child-side", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.against:
        compare = [sys.executable, str(Path(__file__).with_name("compare_revisions.py")), "--against", args.against,
                   "--reps", str(args.reps), "--device", args.device, "--size", str(args.size or 2048),
                   "--batch", str(args.batch)]
        models = [m for m in args.models.split(",") if m and m != "unet_1m"]
        raise SystemExit(subprocess.call(compare + ["--models", ",".join(models)]))
    if args.child:
        memory_child(args.child, args.child_side, args.tile or 1024, args.device)
        return
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print("machine:", machine(args.device))
    speed = []
    for name in [m for m in args.models.split(",") if m]:
        speed.append(speed_row(name, args.size, args.tile, args.batch, args.device, args.reps))
        print(json.dumps(speed[-1]), file=sys.stderr, flush=True)
    if speed:
        print_speed(speed)
    memory = []
    for tool, sizes, unit in (("ours", args.memory_gp, GIGA), ("monai", args.monai_mp, 2**20)):
        for size in sizes:
            memory.append(measure_memory(tool, int(round((size * unit) ** 0.5)), args.tile or 1024, args.device))
            print(json.dumps(memory[-1]), file=sys.stderr, flush=True)
    if memory:
        print_memory(memory)


if __name__ == "__main__":
    main()
