"""Train the shipped demo weights on the synthetic slide and write them to src/napari_hires/weights/.

Segmentation (HCT, MaxViT, xT: small configurations) learns the four classes of the default synthetic slide (seed 0)
from eight 1024 x 1024 level-0 training regions; each is evaluated by the engine's tiled prediction on a 2048 x 2048
held-out region far from them (Dice: mean over the classes present there). The denoiser (a one-stage MAXIM) learns
from noisy/clean pairs of the same regions at the shipped noise level and is evaluated by the PSNR gain on a held-out
1024 x 1024 region. Deterministic for a given --seed on the CPU; sized to finish in about half an hour on 2 cores.

Each trained model's halo is then measured on held-out regions (napari_hires.engine.halo) and stored in its card.

    python scripts/train_demo_weights.py [--models hct maxvit xt maxim] [--seed 0] [--out DIR]
    python scripts/train_demo_weights.py --halos-only     # re-measure the shipped files' halos, weights untouched
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_hires.io.synthetic import CLASS_COLORS, CLASS_NAMES, DEFAULT_SIZE, NOISE_SIGMA, render_labels, render_region
from napari_hires.engine.halo import HaloMeasurement, measure_halo
from napari_hires.models import count_parameters, create_model, load_model, save_model
from napari_hires.training import TrainSettings, evaluate_restoration, evaluate_segmentation, train
from napari_hires.training.losses import restoration_objective, segmentation_objective
from napari_hires.training.sampling import Patch, PairedTileSampler, TileSampler, to_classes
from napari_hires.training.trainer import trained_card

OUT = Path(__file__).resolve().parents[1] / "src" / "napari_hires" / "weights"
#: Level-0 training regions (y0, y1, x0, x1) of the default slide, chosen to hold all four classes.
TRAIN_REGIONS = [
    (20480, 21504, 12288, 13312), (36864, 37888, 16384, 17408), (45056, 46080, 28672, 29696),
    (49152, 50176, 61440, 62464), (28672, 29696, 106496, 107520), (20480, 21504, 77824, 78848),
    (40960, 41984, 102400, 103424), (61440, 62464, 49152, 50176),
]
#: Held-out evaluation regions, away from every training region.
HELD_OUT_SEG = (24576, 26624, 8192, 10240)
HELD_OUT_DENOISE = (24576, 25600, 8192, 9216)
#: Held-out regions on which each model's halo is measured (2 tiles a side).
HALO_REGIONS = [(24576, 25600, 8192, 9216), (28672, 29696, 40960, 41984)]

_XT_NANO_SYMMETRIC = {"window_size": 4, "stem_width": 16, "depths": (1, 1, 1, 1), "widths": (32, 48, 64, 96),
                      "head_size": 16, "drop_path_rate": 0.1, "out_indices": (1, 2, 3, 4), "padding": "symmetric"}
#: name -> (architecture, overrides, tile, batch, steps, lr)
MODELS = {
    "hct": ("hct_tiny_seg_synthetic", "hct_tiny_seg", {}, 128, 8, 1500, 2e-3),
    # the shipped MaxViTs were trained with symmetric stride-2 padding (before the published TF SAME was the default)
    "maxvit": ("maxvit_nano_seg_synthetic", "maxvit_nano_seg", {"window_size": 4, "padding": "symmetric"}, 128, 8,
               500, 2e-3),
    "xt": ("xt_nano_seg_synthetic", "xt_nano_seg", {"window_regions": 4, "region_encoder_args": _XT_NANO_SYMMETRIC},
           256, 4, 300, 2e-3),
    "maxim": ("maxim_nano_denoise_synthetic", "maxim_nano", {"features": 8, "num_stages": 1}, 64, 8, 400, 2e-3),
}


def render(regions, variant: str = "clean", labels: bool = False) -> list[np.ndarray]:
    """Level-0 pixels (or ground-truth classes) of the default slide for each region."""
    out = []
    for y0, y1, x0, x1 in regions:
        if labels:
            out.append(render_labels(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0))
        else:
            out.append(render_region(0, y0, y1, x0, x1, size=DEFAULT_SIZE, seed=0, variant=variant))
    return out


def log(step) -> None:
    if step.step == 1 or step.step % 25 == 0 or step.step == step.steps:
        print(f"  step {step.step}/{step.steps} loss {step.loss:.4f} lr {step.lr:.2e} {step.seconds:.0f}s", flush=True)


def provenance(seed: int, settings: TrainSettings, result, data: dict) -> dict:
    return {
        "trained_by": "scripts/train_demo_weights.py", "seed": seed,
        "data": {"synthetic_slide": {"size": list(DEFAULT_SIZE), "seed": 0, **data},
                 "train_regions_level0": [list(r) for r in TRAIN_REGIONS]},
        "settings": {"steps": settings.steps, "batch": settings.batch, "tile": settings.tile, "lr": settings.lr,
                     "weight_decay": settings.weight_decay, "optimizer": "AdamW, warm-up + cosine",
                     "augment": "flips, quarter turns" + (", intensity jitter" if settings.intensity else ""),
                     "device": result.device, "seconds": round(result.seconds, 1), "weights": "float16",
                     "final_loss": round(float(np.mean(result.losses[-10:])), 4)},
    }


def to_half(model: torch.nn.Module) -> None:
    """Round floating weights through float16, as shipped, so that the evaluation measures the shipped weights."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())


def measure(model: torch.nn.Module, variant: str = "clean") -> HaloMeasurement:
    """Measure the trained model's halo on held-out regions and give it to the model, before it is evaluated."""
    t0 = time.perf_counter()
    found = measure_halo(model, render(HALO_REGIONS, variant), device="cpu")
    model.halo = found.halo
    print(f"  halo {found.halo} px (floor {found.floor:.4f}, measured in {time.perf_counter() - t0:.0f}s)", flush=True)
    return found


def record_halo(card, found: HaloMeasurement):
    """Put the measured halo, and how it was found, in the card."""
    card.halo = found.halo
    rule = f"tiles of {card.tile_size} px (a multiple of {card.input_multiple})"
    if card.architecture.startswith("xt"):
        rule = card.tiling.split(";")[0]
    card.tiling = (f"{rule}; halo {found.halo} px per side, measured: beyond it a tile's output is within "
                   f"{max(found.tolerance, found.floor / 4):.3g} of the output of tiles centred on the same pixels "
                   f"(tiles disagree by {found.floor:.3g} away from their edges, so neighbours are cross-faded)")
    card.metrics["halo"] = found.as_card_entry()
    return card


def evaluate_segmenter(model: torch.nn.Module, data: dict) -> dict:
    t0 = time.perf_counter()
    metrics = evaluate_segmentation(model, data["held_image"], data["held_truth"],
                                    (0, HELD_OUT_SEG[1] - HELD_OUT_SEG[0], 0, HELD_OUT_SEG[3] - HELD_OUT_SEG[2]),
                                    device="cpu")
    metrics["region"] = list(HELD_OUT_SEG)
    metrics["evaluation"] = "engine tiled prediction (model tile, measured halo, blending) at level 0"
    print(f"  Dice {metrics['dice']} {metrics['dice_per_class']} (evaluated in {time.perf_counter() - t0:.0f}s)",
          flush=True)
    return metrics


def evaluate_denoiser(model: torch.nn.Module) -> dict:
    y0, y1, x0, x1 = HELD_OUT_DENOISE
    noisy = render([HELD_OUT_DENOISE], "noisy")[0]
    clean = render([HELD_OUT_DENOISE], "clean")[0]
    metrics = evaluate_restoration(model, noisy, clean, (0, y1 - y0, 0, x1 - x0), device="cpu")
    metrics.update(region=list(HELD_OUT_DENOISE), noise_sigma=NOISE_SIGMA,
                   evaluation="engine tiled prediction (measured halo) at level 0, PSNR against the clean slide")
    print(f"  PSNR {metrics['psnr_before']} -> {metrics['psnr_after']} dB ({metrics['psnr_gain']:+.2f})", flush=True)
    return metrics


def remeasure_halos(out: Path, keys: list[str], data: dict) -> None:
    """Re-measure the halos of shipped model files, re-evaluate them with it and rewrite their cards (the weights
    are left as they are)."""
    for key in keys:
        path = out / f"{MODELS[key][0]}.safetensors"
        model = load_model(path)
        print(MODELS[key][0], flush=True)
        found = measure(model, "noisy" if key == "maxim" else "clean")
        model.card.metrics = evaluate_denoiser(model) if key == "maxim" else evaluate_segmenter(model, data)
        path.with_suffix(".json").write_text(record_halo(model.card, found).to_json())


def ship(model: torch.nn.Module, path: Path, card) -> None:
    """Save the model file with its floating tensors stored as float16 (load_model casts them back to float32); the
    card records the digest of those float16 weights."""
    save_model(model, path, card, floats=torch.float16)
    model.card = card


def train_segmenter(key: str, seed: int, out: Path, data: dict) -> dict:
    name, arch, overrides, tile, batch, steps, lr = MODELS[key]
    torch.manual_seed(seed)
    model = create_model(arch, **overrides)
    settings = TrainSettings(steps=steps, batch=batch, tile=tile, lr=lr, seed=seed, device="cpu")
    print(f"{name}: {arch} {overrides} ({count_parameters(model)} params), {steps} steps of {batch} x {tile}px",
          flush=True)
    result = train(model, TileSampler(data["patches"], tile), segmentation_objective(), settings, callback=log)
    to_half(model)
    found = measure(model)
    metrics = evaluate_segmenter(model, data)
    card = trained_card(model, provenance(seed, settings, result, {"labels": "ground truth"}), metrics,
                        class_names=dict(CLASS_NAMES), class_colors={k: list(v) for k, v in CLASS_COLORS.items()},
                        description=f"{arch} trained on the synthetic slide (demo weights: four tissue classes)")
    record_halo(card, found)
    ship(model, out / name, card)
    return {"name": name, "dice": metrics["dice"], "seconds": round(result.seconds)}


def train_denoiser(seed: int, out: Path, data: dict) -> dict:
    name, arch, overrides, tile, batch, steps, lr = MODELS["maxim"]
    torch.manual_seed(seed)
    model = create_model(arch, **overrides)
    settings = TrainSettings(steps=steps, batch=batch, tile=tile, lr=lr, seed=seed, device="cpu", intensity=False)
    print(f"{name}: {arch} {overrides} ({count_parameters(model)} params), {steps} steps of {batch} x {tile}px",
          flush=True)
    sampler = PairedTileSampler(data["noisy"], data["clean"], tile)
    result = train(model, sampler, restoration_objective(), settings, callback=log)
    to_half(model)
    found = measure(model, "noisy")
    metrics = evaluate_denoiser(model)
    card = trained_card(model, provenance(seed, settings, result, {"variant": f"noisy (sigma {NOISE_SIGMA}) vs clean"}),
                        metrics, description=f"{arch} denoiser for the synthetic slide's noise (sigma {NOISE_SIGMA})")
    record_halo(card, found)
    ship(model, out / name, card)
    return {"name": name, "psnr_gain": float(metrics["psnr_gain"]), "seconds": round(result.seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--halos-only", action="store_true",
                        help="re-measure the halos of the model files in --out and update their cards")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.perf_counter()
    data: dict = {}
    if args.halos_only:
        data["held_image"], data["held_truth"] = render([HELD_OUT_SEG])[0], render([HELD_OUT_SEG], labels=True)[0]
        remeasure_halos(args.out, args.models, data)
        return
    seg = [m for m in args.models if m != "maxim"]
    if seg:
        images, truths = render(TRAIN_REGIONS), render(TRAIN_REGIONS, labels=True)
        data["patches"] = [Patch(i, to_classes(t, 4), (r[0], r[2])) for i, t, r in zip(images, truths, TRAIN_REGIONS)]
        data["held_image"] = render([HELD_OUT_SEG])[0]
        data["held_truth"] = render([HELD_OUT_SEG], labels=True)[0]
        print(f"rendered training and held-out regions in {time.perf_counter() - t0:.0f}s", flush=True)
    report = [train_segmenter(m, args.seed, args.out, data) for m in seg]
    if "maxim" in args.models:
        clean = [p.image for p in data["patches"]] if seg else render(TRAIN_REGIONS)
        data["clean"] = [Patch(i, None, (r[0], r[2])) for i, r in zip(clean, TRAIN_REGIONS)]
        data["noisy"] = [Patch(i, None, (r[0], r[2])) for i, r in zip(render(TRAIN_REGIONS, "noisy"), TRAIN_REGIONS)]
        report.append(train_denoiser(args.seed, args.out, data))
    for row in report:
        print(row)
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
