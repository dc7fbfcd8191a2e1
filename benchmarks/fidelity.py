"""Fidelity to the official code: each family's reference checkpoint (``../shared/reference``, official format)
imported through napari-hires's own converter, run on the fixed input, and compared with the official outputs.

    .venv/bin/python benchmarks/fidelity.py [--reference DIR]

Prints one row per compared output: max abs and rel = max |ref - got| / max |ref| (the fixtures' README metric),
float32 on this machine's CPU, next to the tolerance the tests hold (1e-5). The same comparisons are the tests in
``tests/models/test_*_import.py``; this script only prints the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

TOLERANCE = 1e-5


def _row(family: str, output: str, ref: np.ndarray, got: torch.Tensor, seconds: float) -> str:
    diff = float(np.abs(ref - got.detach().numpy()).max())
    rel = diff / float(np.abs(ref).max())
    return (f"| {family} | {output} {tuple(ref.shape)} | {diff:.1e} | {rel:.1e} | "
            f"{'yes' if rel <= TOLERANCE else 'NO'} | {seconds:.1f} |")


def main() -> None:
    from napari_hires.models.importers import import_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "reference")
    ref = parser.parse_args().reference

    def load(name: str) -> np.ndarray:
        return np.load(ref / name, allow_pickle=False)

    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU; reference {ref}\n")
    print("| family | output | max abs | rel | <= 1e-5 | import + run s |")
    print("|---|---|---|---|---|---|")
    for family, checkpoint, inputs, output in (("HCT", "hct_official.pth", "hct_input.npy", "hct_output.npy"),
                                               ("MaxViT", "maxvit_timm.safetensors", "maxvit_input.npy",
                                                "maxvit_output.npy"),
                                               ("xT", "xt_official.pth", "xt_input.npy", "xt_output.npy")):
        t0 = time.perf_counter()
        model = import_checkpoint(ref / checkpoint)
        with torch.no_grad():
            logits = model(torch.from_numpy(load(inputs)))
        print(_row(family, "logits", load(output), logits, time.perf_counter() - t0), flush=True)
    t0 = time.perf_counter()
    model = import_checkpoint(ref / "maxim_official.npz")
    with torch.no_grad():
        outputs = model.forward_all(torch.from_numpy(load("maxim_input.npy")).permute(0, 3, 1, 2))
    seconds = time.perf_counter() - t0
    with np.load(ref / "maxim_output.npz", allow_pickle=False) as official:
        for s, stage in enumerate(outputs):
            for k, out in enumerate(stage):
                name = f"outputs_{s}_{k}"
                print(_row("MAXIM", name, official[name], out.permute(0, 2, 3, 1), seconds))


if __name__ == "__main__":
    main()
