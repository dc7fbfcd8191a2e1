"""Model benchmark: parameters, multiply-adds and throughput of every registered configuration.

    .venv/bin/python benchmarks/models.py                 # all models, CPU
    .venv/bin/python benchmarks/models.py --device cuda --paper   # on a GPU, plus the two paper memory figures

    .venv/bin/python benchmarks/models.py --published     # published configurations next to the papers' figures

Throughput is megapixels of input per second for a batch of tiles (tile 512 by default) after a warm-up pass,
in eval mode under ``torch.inference_mode``; on CUDA with bf16 autocast. MACs come from ``torch.utils.flop_counter``
on the meta device (FLOPs / 2). ``--paper`` adds peak GPU memory of one HCT training step (batch 32, 3328 x 2560,
float32; the paper: fits in 48 GB) and of streaming xT over a 29,000 x 25,000 image (the paper: 40 GB).
``--published`` lists the published configurations whose checkpoints napari-hires imports, with parameters and
multiply-adds at the papers' input sizes next to the papers' figures (on the meta device: no memory, no time).
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_hires.models import count_parameters, create_model, list_models, model_entry
from napari_hires.models.layers import count_macs

#: google-research/maxvit README (the released checkpoints): parameters (M) and FLOPs (B, which are multiply-adds:
#: timm counts 5.6 GMACs for MaxViT-T at 224) at 224 / 384 / 512. The paper's Table 2 gives MaxViT-B as 120M / 23.4G.
MAXVIT_README = {"tiny": (31, 5.6, 17.7, 33.7), "small": (69, 11.7, 36.1, 67.6), "base": (119, 24.2, 74.2, 138.5),
                 "large": (212, 43.9, 133.1, 245.4), "xlarge": (475, 97.8, 293.7, 535.2)}


def paper_figures() -> list[tuple[str, int, int, float | None, float | None, str]]:
    """(model, input height, width, paper parameters, paper multiply-adds, where the figures come from) of every
    published configuration napari-hires imports, at the input size the paper reports."""
    rows: list[tuple[str, int, int, float | None, float | None, str]] = [
        ("hct_base", 3328, 2560, 1.7e6, None, "HCT paper: 1.7M parameters (no FLOPs given)")]
    for size, (params, *flops) in MAXVIT_README.items():
        for image, gflops in zip((224, 384, 512), flops):
            name = f"maxvit_{size}_tf_{image}"
            if name in list_models(name):
                rows.append((name, image, image, params * 1e6, gflops * 1e9, "MaxViT README"))
    rows += [
        ("maxim_3s", 256, 256, 22.2e6, 339e9 / 2, "MAXIM README: 22.2M, 339G FLOPs (2 x MACs) at 256"),
        ("maxim_2s", 256, 256, 14.1e6, 216e9 / 2, "MAXIM README: 14.1M, 216G FLOPs (2 x MACs) at 256"),
        ("xt_maxvit_tiny", 512, 512, None, None, "xT publishes Swin/Hiera region encoders only (Swin-T xT: 47M)"),
    ]
    return rows


def published_table() -> None:
    """Print the published configurations' parameters and multiply-adds next to the papers' figures."""
    def ratio(ours: float, paper: float | None) -> str:
        return f"{ours / paper:.3f}" if paper else "—"

    print("| model | input | params | paper params | ratio | GMACs | paper GMACs | ratio | paper figures from |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, h, w, params_paper, macs_paper, source in paper_figures():
        with torch.device("meta"):
            params = count_parameters(create_model(name))
        macs = macs_at(name, h, w)
        paper_p = f"{params_paper / 1e6:.1f}M" if params_paper else "—"
        paper_m = f"{macs_paper / 1e9:.1f}" if macs_paper else "—"
        print(f"| {name} | {h}x{w} | {params / 1e6:.2f}M | {paper_p} | {ratio(params, params_paper)} | "
              f"{macs / 1e9:.2f} | {paper_m} | {ratio(macs, macs_paper)} | {source} |", flush=True)


def macs_at(name: str, tile: int, width: int | None = None) -> int:
    """Multiply-adds of one forward pass at ``tile`` x ``width`` (square by default), counted on the meta device (no
    memory, no time)."""
    with torch.device("meta"):
        model = create_model(name).eval()
        x = torch.empty(1, model.in_channels, tile, width or tile)
    return count_macs(model, x)


def throughput(name: str, tile: int, batch: int, device: str, repeats: int, budget_s: float) -> float:
    """Megapixels per second of input, best of ``repeats`` timed passes (at most ``budget_s`` seconds of timing)."""
    model = create_model(name).eval().to(device)
    x = torch.rand(batch, model.in_channels, tile, tile, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    best = float("inf")
    with torch.inference_mode(), autocast:
        model(x)  # warm-up
        spent = 0.0
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            best, spent = min(best, dt), spent + dt
            if spent > budget_s:
                break
    return batch * tile * tile / best / 1e6


def paper_memory(device: str) -> list[tuple[str, float, str]]:
    """Peak GPU memory of the two figures the papers give (GB)."""
    rows = []
    torch.cuda.reset_peak_memory_stats()
    model = create_model("hct_base").to(device).train()
    x = torch.rand(32, 1, 3328, 2560, device=device)
    loss = torch.nn.functional.cross_entropy(model(x), torch.zeros(32, dtype=torch.long, device=device))
    loss.backward()
    rows.append(("HCT train step, batch 32, 3328x2560, fp32", torch.cuda.max_memory_allocated() / 1e9, "fits in 48 GB"))
    del model, x, loss
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = create_model("xt_maxvit_tiny").to(device).eval()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(torch.rand(1, 3, 29000, 25000, device=device))
    rows.append(("streaming xT, 29,000 x 25,000", torch.cuda.max_memory_allocated() / 1e9, "40 GB"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget", type=float, default=20.0, help="seconds of timing per model at most")
    parser.add_argument("--models", default="*", help="glob of model names")
    parser.add_argument("--paper", action="store_true", help="also the papers' GPU memory figures (CUDA only)")
    parser.add_argument("--published", action="store_true",
                        help="only the published configurations' parameters and MACs next to the papers' figures")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.published:
        published_table()
        return

    print(f"device {args.device}, tile {args.tile}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| model | task | published | params | GMACs / tile | MP/s |")
    print("|---|---|---|---|---|---|")
    for name in list_models(args.models):
        entry = model_entry(name)
        with torch.device("meta"):
            params = count_parameters(create_model(name))
        gmacs = macs_at(name, args.tile) / 1e9
        mps = throughput(name, args.tile, args.batch, args.device, args.repeats, args.budget)
        print(f"| {name} | {entry.task} | {'yes' if entry.published else ''} | {params:,} | {gmacs:.2f} | {mps:.3f} |",
              flush=True)
    if args.paper:
        if args.device != "cuda":
            raise SystemExit("--paper needs --device cuda")
        print("\n| paper figure | peak GPU memory (GB) | paper |\n|---|---|---|")
        for what, gb, paper in paper_memory(args.device):
            print(f"| {what} | {gb:.1f} | {paper} |")


if __name__ == "__main__":
    main()
