"""Augmentation of training tiles: the same flip and rotation for pixels and targets, intensity jitter for pixels.

Geometric changes are drawn per tile and applied identically to the (n, y, x, c) pixels and to the target (classes
(n, y, x) or a clean image (n, y, x, c)), so labels stay aligned. Intensity jitter (per-channel gain, offset and a
contrast change, as from another stain or scanner) works on the uint8 pixels so that normalisation stays the one the
engine uses; a clean-image target gets the same jitter so that restoration pairs stay pairs.
"""

from __future__ import annotations

import numpy as np

#: Ranges of the intensity jitter: gain per channel, offset per channel (grey levels) and contrast about mid-grey.
GAIN = 0.12
OFFSET = 12.0
CONTRAST = 0.15


def _geometric(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """One tile rotated by k quarter turns and optionally flipped left-right (axes 0, 1 are y, x)."""
    a = np.rot90(a, k, axes=(0, 1))
    return a[:, ::-1] if flip else a


def _jitter(tile: np.ndarray, gain: np.ndarray, offset: np.ndarray, contrast: float) -> np.ndarray:
    """Intensity change of one (y, x, c) uint8 tile, clipped back to uint8."""
    x = (tile.astype(np.float32) - 128.0) * contrast + 128.0  # about mid-grey, so image pairs stay pairs
    x = x * gain + offset
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def augment(images: np.ndarray, targets: np.ndarray | None, rng: np.random.Generator, *,
            intensity: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Randomly flipped, rotated (and, with ``intensity``, colour-jittered) copies of a batch and its targets."""
    paired_image = targets is not None and targets.ndim == images.ndim
    out_images, out_targets = [], []
    for i in range(len(images)):
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        tile = _geometric(images[i], k, flip)
        target = None if targets is None else _geometric(targets[i], k, flip)
        if intensity and images.dtype == np.uint8:
            c = images.shape[-1]
            gain = rng.uniform(1 - GAIN, 1 + GAIN, c).astype(np.float32)
            offset = rng.uniform(-OFFSET, OFFSET, c).astype(np.float32)
            contrast = float(rng.uniform(1 - CONTRAST, 1 + CONTRAST))
            tile = _jitter(tile, gain, offset, contrast)
            if paired_image:
                target = _jitter(target, gain, offset, contrast)
        out_images.append(tile)
        out_targets.append(target)
    new_targets = None if targets is None else np.ascontiguousarray(np.stack(out_targets))
    return np.ascontiguousarray(np.stack(out_images)), new_targets
