"""Blind-spot (Noise2Void) restoration training: learn to denoise the user's own image with no clean target.

A random ``ratio`` of pixels (1.5 % by default) is replaced by a random neighbour within ``radius`` pixels, and the
loss compares the model's output with the original noisy values at those pixels only. The model cannot copy a pixel
it never saw, and pixel-independent noise cannot be predicted from the neighbours, so the best it can do is predict
the clean signal: it learns to denoise.
"""

from __future__ import annotations

import torch

from napari_hires.training.losses import Objective

MASK_RATIO = 0.015
RADIUS = 2


def _shift(pos: torch.Tensor, offset: torch.Tensor, size: int) -> torch.Tensor:
    """``pos + offset``, or ``pos - offset`` where that leaves the image: never back onto ``pos`` when offset != 0."""
    moved = pos + offset
    return torch.where((moved < 0) | (moved >= size), pos - offset, moved).clamp(0, size - 1)


def blind_spot_mask(x: torch.Tensor, ratio: float = MASK_RATIO, radius: int = RADIUS) -> tuple[torch.Tensor, torch.Tensor]:
    """(input with masked pixels replaced by random neighbours, boolean mask (n, 1, y, x) of those pixels)."""
    if not 0 < ratio < 1 or radius < 1:
        raise ValueError(f"blind-spot ratio must lie in (0, 1) and radius be >= 1, got {ratio} and {radius}")
    n, _, h, w = x.shape
    mask = torch.rand((n, 1, h, w), device=x.device) < ratio
    side = 2 * radius + 1
    pick = torch.randint(0, side * side - 1, (n, h, w), device=x.device)
    pick = pick + (pick >= side * side // 2).long()  # skip the centre: never the pixel itself
    ys = _shift(torch.arange(h, device=x.device).view(1, h, 1), pick // side - radius, h)
    xs = _shift(torch.arange(w, device=x.device).view(1, 1, w), pick % side - radius, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    neighbours = x.permute(0, 2, 3, 1)[batch, ys, xs].permute(0, 3, 1, 2)
    return torch.where(mask, neighbours, x), mask


def blind_spot_objective(ratio: float = MASK_RATIO, radius: int = RADIUS) -> Objective:
    """Mean squared error at the blind-spot pixels between the output on the masked input and the noisy input."""

    def loss(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        masked, mask = blind_spot_mask(x, ratio, radius)
        pred = model(masked).float()
        weight = mask.float()
        count = weight.sum() * x.shape[1]
        return (((pred - x.float()) ** 2) * weight).sum() / count.clamp_min(1.0)

    return loss
