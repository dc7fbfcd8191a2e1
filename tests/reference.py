"""The official-format reference fixtures (``../shared/reference`` beside the repository, or the folder named by
``NAPARI_HIRES_REFERENCE``; its README describes them) and the agreement metric its README defines."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(os.environ.get("NAPARI_HIRES_REFERENCE")
                 or Path(__file__).resolve().parents[2] / "shared" / "reference")
if not (REFERENCE / "fixtures.json").is_file():  # fail loudly: the fidelity tests must not pass by being skipped
    raise RuntimeError(f"the reference fixtures are not at {REFERENCE}: put ../shared/reference beside the "
                       "repository or set NAPARI_HIRES_REFERENCE to their folder")


def load(name: str) -> np.ndarray:
    """One ``.npy`` array of the fixtures, read without pickle."""
    return np.load(REFERENCE / name, allow_pickle=False)


def rel(ref: np.ndarray, got: torch.Tensor) -> float:
    """max |ref - got| / max |ref|: the README's relative agreement."""
    return float(np.abs(ref - got.detach().numpy()).max() / np.abs(ref).max())
