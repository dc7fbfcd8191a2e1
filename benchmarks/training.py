"""Training benchmark: time per step and peak memory of the training loop for the shipped model configurations,
and what fine-tuning gains on a real tile.

    .venv/bin/python benchmarks/training.py                         # CPU: every configuration at tiles 128 and 256
    .venv/bin/python benchmarks/training.py --device cuda --tiles 256 512
    .venv/bin/python benchmarks/training.py --fine-tune             # held-out Dice: the defaults vs 200 fixed steps
    .venv/bin/python benchmarks/training.py --encoder               # an imported MaxViT encoder vs random init

``--fine-tune`` fine-tunes ``hct_tiny_seg.synthetic`` on skimage's immunohistochemistry tile (512 x 512, labels by
colour deconvolution, ``tests/ihc_tile.py``) corrected on its left half, once with the default settings (at most
1000 steps, a fifth of the corrections held out, early stopping, the best state kept) and once for a fixed 200 steps
on every correction (the old default), and prints the Dice of the unlabelled right half (never trained on) before
and after, with the held-out Dice the run itself reported.

``--encoder`` makes a published-format MaxViT encoder (``tests/published_encoder.py``: trained on the tile's top
half, written under timm's names with a config.json), imports it as the encoder of ``maxvit_nano_seg`` and
fine-tunes on the bottom-left quarter, against the same fine-tuning from random initialisation, at several step
budgets (same seed, held-out cells, best state kept); it prints the best held-out Dice and the Dice of the
bottom-right quarter, which neither the encoder nor the fine-tuning saw.

Each row runs ``napari_hires.training.train`` (AdamW, augmentation, gradient clipping; autocast on CUDA) on tiles
sampled from a rendered region of the synthetic slide, in a fresh process so that its peak memory is its own:
- step s: median seconds per training step after two warm-up steps, and train px/s (tile pixels per second);
- train/infer: one training step's time over one inference pass on the same batch in the same process (this
  machine's speed drifts between runs, ratios do not);
- peak MB above start: CPU peak resident memory (Linux VmHWM, reset once the model and data are ready) above what
  the process held then, or CUDA ``max_memory_allocated``; the last column compares tile 2t with tile t (4x pixels).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

#: name -> (architecture, overrides, task): the configurations of the shipped demo weights.
CONFIGS = {
    "hct_tiny_seg": ("hct_tiny_seg", {}, "segmentation"),
    "maxvit_nano_seg (P=4)": ("maxvit_nano_seg", {"window_size": 4}, "segmentation"),
    "xt_nano_seg (4x4 regions)": ("xt_nano_seg", {"window_regions": 4}, "segmentation"),
    "maxim_nano (1 stage of 8 features)": ("maxim_nano", {"features": 8, "num_stages": 1}, "restoration"),
    "maxim_nano (blind-spot self-supervised)": ("maxim_nano", {"features": 8, "num_stages": 1}, "blind-spot"),
}
REGION = (20480, 21504, 12288, 13312)  # a 1024 x 1024 training region of the default slide


def child(name: str, tile: int, batch: int, steps: int, device: str) -> dict:
    """One configuration in this (fresh) process: the training loop's step time and peak memory."""
    import psutil

    from napari_hires.engine.runner import TileRunner
    from napari_hires.io.synthetic import DEFAULT_SIZE, render_labels, render_region
    from napari_hires.models import count_parameters, create_model
    from napari_hires.training import TrainSettings, train
    from napari_hires.training.losses import restoration_objective, segmentation_objective
    from napari_hires.training.sampling import PairedTileSampler, Patch, TileSampler, to_classes
    from napari_hires.training.selfsupervised import blind_spot_objective

    arch, overrides, kind = CONFIGS[name]
    y0, y1, x0, x1 = REGION
    clean = render_region(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0)
    if kind == "segmentation":
        truth = to_classes(render_labels(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0), 4)
        sampler, objective = TileSampler([Patch(clean, truth, (y0, x0))], tile), segmentation_objective()
    else:
        noisy = render_region(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0, variant="noisy")
        if kind == "restoration":
            sampler = PairedTileSampler([Patch(noisy, None, (y0, x0))], [Patch(clean, None, (y0, x0))], tile)
            objective = restoration_objective()
        else:
            sampler, objective = TileSampler([Patch(noisy, None, (y0, x0))], tile), blind_spot_objective()
    torch.manual_seed(0)
    model = create_model(arch, **overrides)
    runner = TileRunner(model, device=device, batch=batch)
    images, _ = sampler.sample(batch, np.random.default_rng(0))
    x = runner.to_input(images)
    with torch.inference_mode():  # warm-up, then the inference time of the same batch (median of 3)
        model.eval()(x)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model(x)
            if runner.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        infer = statistics.median(times)
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline = psutil.Process().memory_info().rss
    peak_reset = _reset_peak_rss()
    stamps: list[float] = []
    settings = TrainSettings(steps=steps, batch=batch, tile=tile, device=device, bn_batches=0, seed=0)
    train(model, sampler, objective, settings, callback=lambda s: stamps.append(s.seconds))
    step = statistics.median(np.diff(stamps[1:]))  # the first two steps warm up
    if runner.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = (_peak_rss() if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) - baseline
    return dict(name=name, tile=tile, batch=batch, params=count_parameters(model), step=step, infer=infer,
                peak=peak, device=str(runner.device))


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: VmHWM), so that rendering the data does not count; False if not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run(name: str, tile: int, batch: int, steps: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--tile", str(tile), "--batch", str(batch),
           "--steps", str(steps), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{name} at tile {tile} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


FINE_TUNE_RUNS = {
    "defaults (at most 1000 steps, early stopping)": {},
    "fixed 200 steps, nothing held out": {"steps": 200, "holdout": 0.0},
}


def fine_tune_table(device: str, model: str = "hct_tiny_seg.synthetic") -> None:
    """Held-out and unlabelled-half Dice of fine-tuning on the corrected half of a real tile, per run of
    ``FINE_TUNE_RUNS``."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))  # the tile and its labels, as the tests use them
    from ihc_tile import ihc_tile

    import napari_hires.models.shipped  # noqa: F401  (registers the shipped weights)
    from napari_hires.models import create_model
    from napari_hires.training import TrainSettings, dice_per_class, fine_tune, predict_box

    image, truth, corrections = ihc_tile()
    half = (0, image.shape[0], image.shape[1] // 2, image.shape[1])

    def unlabelled_half(net) -> dict[int, float]:
        return dice_per_class(predict_box(net, image, half, device=device), truth[:, half[2]:], 4)

    before = unlabelled_half(create_model(model))
    print(f"\n{model} on skimage immunohistochemistry 512 x 512, corrections on the left half; Dice of the right "
          f"half (never trained on) before: mean {np.mean(list(before.values())):.3f}, nuclei {before[3]:.3f}\n")
    print("| run | steps done | s | held-out Dice before -> kept (step) | right half mean Dice | right half nuclei "
          "Dice |")
    print("|---|---|---|---|---|---|")
    for name, changes in FINE_TUNE_RUNS.items():
        settings = TrainSettings(**{"device": device, **changes})
        job = fine_tune(image, corrections, model, settings=settings)
        after, held = unlabelled_half(job.model), job.result.held_out
        kept = "-" if held is None else (f"{held.before:.3f} -> "
                                         f"{job.result.scores[job.result.kept_step]:.3f} ({job.result.kept_step})")
        print(f"| {name} | {job.result.steps_done} | {job.result.seconds:.0f} | {kept} "
              f"| {np.mean(list(before.values())):.3f} -> {np.mean(list(after.values())):.3f} "
              f"| {before[3]:.3f} -> {after[3]:.3f} |", flush=True)


ENCODER_BUDGETS = (10, 40, 160)
ENCODER_PRETRAINING = 400  # steps the encoder is trained for on the top half, more than any fine-tuning budget


def encoder_table(device: str) -> None:
    """Held-out and unseen-quarter Dice of fine-tuning from an imported encoder vs from random initialisation."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from ihc_tile import ihc_tile
    from published_encoder import NANO, bottom_left_corrections, write_published_maxvit

    from napari_hires.models import create_model
    from napari_hires.training import TrainSettings, dice_per_class, fine_tune, predict_box

    image, truth, _ = ihc_tile()
    h, w = truth.shape
    quarter = (h // 2, h, w // 2, w)
    encoder = write_published_maxvit(Path(tempfile.mkdtemp()), steps=ENCODER_PRETRAINING, device=device)
    print(f"\nmaxvit_nano_seg (P = 4) on skimage immunohistochemistry, fine-tuned on the bottom-left quarter; the "
          f"encoder was trained for {ENCODER_PRETRAINING} steps on the top half and imported from {encoder.name} (timm "
          "names)\n")
    print("| steps | start | held-out Dice before -> best (step) | unseen quarter mean Dice | s |")
    print("|---|---|---|---|---|")
    for steps in ENCODER_BUDGETS:
        for start in ("imported encoder", "random init"):
            model = (create_model("maxvit_nano_seg", encoder=encoder, num_classes=NANO["num_classes"])
                     if start == "imported encoder" else create_model("maxvit_nano_seg", **NANO))
            job = fine_tune(image, bottom_left_corrections(), model, settings=TrainSettings(
                steps=steps, batch=4, tile=128, lr=1e-3, eval_every=max(steps // 4, 1), patience=0, bn_batches=4,
                device=device))
            scores = {k: v for k, v in job.result.scores.items() if k}
            best = max(scores, key=scores.get)
            unseen = dice_per_class(predict_box(job.model, image, quarter, device=device),
                                    truth[quarter[0]:, quarter[2]:], NANO["num_classes"])
            print(f"| {steps} | {start} | {job.result.scores[0]:.3f} -> {scores[best]:.3f} ({best}) "
                  f"| {np.mean(list(unseen.values())):.3f} | {job.result.seconds:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from: " + ", ".join(CONFIGS))
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fine-tune", action="store_true", help="the held-out Dice table instead (see above)")
    parser.add_argument("--encoder", action="store_true",
                        help="imported encoder vs random initialisation instead (see above)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tile, args.batch, args.steps, args.device)))
        return
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"machine: {platform.node()}, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"device {args.device}")
    if args.fine_tune:
        fine_tune_table(args.device)
        return
    if args.encoder:
        encoder_table(args.device)
        return
    print("\n| configuration | params | tile x batch | step s | train px/s | train/infer | peak MB above start "
          "| peak x (tile 2t / t) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in [c for c in args.configs.split(",") if c]:
        previous = None
        for tile in sorted(args.tiles):
            r = run(name, tile, args.batch, args.steps, args.device)
            growth = f"{r['peak'] / previous:.2f}" if previous else ""
            previous = r["peak"]
            print(f"| {name} | {r['params'] / 1e6:.2f}M | {tile} x {r['batch']} | {r['step']:.2f} "
                  f"| {r['batch'] * tile * tile / r['step'] / 1e3:,.0f}k | {r['step'] / r['infer']:.1f} "
                  f"| {r['peak'] / 2**20:,.0f} | {growth} |", flush=True)


if __name__ == "__main__":
    main()
