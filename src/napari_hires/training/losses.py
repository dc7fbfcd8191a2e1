"""Training objectives: what a batch of normalised inputs and targets costs a model.

Segmentation: cross-entropy plus soft Dice over labelled pixels only (``IGNORE_INDEX`` never counts), so small
classes such as nuclei weigh as much as the background. Restoration: Charbonnier distance to a clean target, or,
with no clean target, the blind-spot loss of :mod:`napari_hires.training.selfsupervised`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from napari_hires.training.sampling import IGNORE_INDEX

#: loss(model, normalised input (n, c, y, x), target) -> scalar tensor
Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels; zero (still differentiable) when none is labelled."""
    labelled = target != IGNORE_INDEX
    if not labelled.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE_INDEX)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the labelled pixels of the batch."""
    labelled = (target != IGNORE_INDEX).unsqueeze(1)
    probs = torch.softmax(logits.float(), dim=1) * labelled
    onehot = F.one_hot(torch.where(labelled[:, 0], target.long(), 0), logits.shape[1]).permute(0, 3, 1, 2)
    onehot = onehot.float() * labelled
    present = onehot.sum(dim=(0, 2, 3)) > 0
    if not present.any():
        return logits.sum() * 0.0
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + eps) / (total + eps)
    return 1.0 - dice[present].mean()


def segmentation_objective(dice_weight: float = 1.0) -> Objective:
    """Cross-entropy + ``dice_weight`` x soft Dice on labelled pixels of (n, y, x) class targets."""

    def loss(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        return masked_cross_entropy(logits, target) + dice_weight * soft_dice_loss(logits, target)

    return loss


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + eps^2)): L1 that is smooth at zero (MAXIM's pixel loss)."""
    return torch.sqrt((pred.float() - target.float()) ** 2 + eps**2).mean()


def restoration_objective() -> Objective:
    """Charbonnier distance of the restoration to a clean, normalised (n, c, y, x) target."""

    def loss(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return charbonnier(model(x), target)

    return loss
