"""Held-out pixels by region: the user's corrections cut into square cells, about a fifth of them kept for scoring.

Neighbouring pixels look alike, so a random pixel held out would be scored on what training saw beside it. Here the
training regions are cut into cells of half a training tile; in a seeded random order, cells are held out until they
hold ``fraction`` of the labelled pixels. No training tile touches a held-out cell or the ``gap`` around it (the
model's halo, up to a quarter of a cell: :func:`gap_for`), and a cell is passed over when keeping tiles clear of it would leave more
labelled pixels unused than it holds itself (a cell between two held-out ones, say). Labelled pixels that no clear
tile covers train nothing and are scored nothing. With fewer than ``MIN_CELLS`` labelled cells nothing is held out:
training uses every label and reports no held-out score, and the split's note says so.
Fine-tuning scores the held-out cells' labelled pixels (Dice per class); self-supervised restoration, whose every
pixel is "labelled", scores the blind-spot prediction of the held-out cells' pixels
(:mod:`napari_hires.training.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from napari_hires.geometry import Box
from napari_hires.training.sampling import IGNORE_INDEX, Patch, covered_by_tiles, tile_starts_clear

#: Share of the labelled pixels held out by default.
HOLDOUT = 0.2
#: Fewest labelled cells from which any is held out.
MIN_CELLS = 5


@dataclass(frozen=True)
class Cell:
    """One held-out cell: ``box`` in pixels of patch ``patch``, with ``labelled`` labelled pixels in it."""

    patch: int
    box: Box
    labelled: int


@dataclass
class Split:
    """Training patches (held-out cells kept out, unusable labels dropped) and the held-out cells of the originals."""

    train: list[Patch]
    held_out: list[Cell]
    patches: list[Patch]  # the patches as read, whose labels the held-out cells are scored on
    cell: int
    gap: int
    labelled: int  # labelled pixels in all
    training: int  # labelled pixels some training tile covers
    note: str = ""

    @property
    def held(self) -> int:
        """Labelled pixels held out."""
        return sum(c.labelled for c in self.held_out)

    def level_box(self, cell: Cell) -> list[int]:
        """A held-out cell in level pixels (y0, y1, x0, x1)."""
        return list(_level(self.patches[cell.patch], cell.box))

    def record(self) -> dict[str, Any]:
        """The split for the model card."""
        return {"cell": self.cell, "gap": self.gap, "labelled_pixels": self.labelled,
                "training_pixels": self.training, "held_out_pixels": self.held,
                "unused_pixels": self.labelled - self.training - self.held,
                "held_out_cells": [self.level_box(c) for c in self.held_out], "note": self.note}


def cell_side(tile: int) -> int:
    """The side of the split's cells for training tiles of ``tile`` px: half a tile, at least 16 px."""
    return max(16, tile // 2)


def gap_for(halo: int, tile: int) -> int:
    """The gap kept between training tiles and held-out cells: the model's halo, but at most a quarter of a cell, so
    that the ring of labels no tile may use around a held-out cell stays about the cell's size (a MaxViT's halo of
    32 px around 64-px cells would leave three times the held-out labels unused, and nothing could be held out)."""
    return min(halo, cell_side(tile) // 4)


def _labelled_mask(patch: Patch) -> np.ndarray:
    """Which pixels of a patch are labelled (every pixel of unlabelled, self-supervised data)."""
    if patch.labels is None:
        return np.ones(patch.image.shape[:2], bool)
    return patch.labels != IGNORE_INDEX


def _cells(masks: Sequence[np.ndarray], side: int, tile: int) -> list[Cell]:
    """The labelled cells of every patch at least a tile on each side (smaller ones only train)."""
    cells = []
    for k, mask in enumerate(masks):
        h, w = mask.shape
        if h < tile or w < tile:
            continue
        for y in range(0, h, side):
            for x in range(0, w, side):
                box = Box(y, min(h, y + side), x, min(w, x + side))
                count = int(np.count_nonzero(mask[box.slices]))
                if count:
                    cells.append(Cell(k, box, count))
    return cells


class _Layout:
    """Which labelled pixels training tiles can still cover as cells are held out, patch by patch.

    Holding out a box changes the coverage only of pixels within a tile of it, and the tiles covering those lie
    within two tiles of it; so each change is computed on that neighbourhood alone, exactly.
    """

    def __init__(self, patches: Sequence[Patch], masks: Sequence[np.ndarray], tile: int, gap: int) -> None:
        self.patches, self.masks, self.tile, self.gap = patches, masks, tile, gap
        self.cover = [m.copy() for m in masks]  # labelled pixels a clear tile covers
        self.keep_out: list[list[Box]] = [[] for _ in patches]  # per patch, in its pixels

    def local(self, box: Box) -> dict[int, Box]:
        """A held-out level box, grown by the gap, in the pixels of each patch it falls on."""
        found = {}
        for k, patch in enumerate(self.patches):
            (oy, ox), (h, w), g = patch.origin, patch.image.shape[:2], self.gap
            y0, y1, x0, x1 = _shift(box, -oy, -ox)
            grown = Box(y0 - g, y1 + g, x0 - g, x1 + g).intersect(Box(0, h, 0, w))
            if grown is not None:
                found[k] = grown
        return found

    def change(self, k: int, box: Box) -> tuple[Box, np.ndarray]:
        """(the pixels whose coverage holding ``box`` out of patch ``k`` changes, their coverage after)."""
        t, mask = self.tile, self.masks[k]
        bounds = Box(0, mask.shape[0], 0, mask.shape[1])
        near, inner = box.grow(2 * t, bounds), box.grow(t, bounds)
        keep = [_shift(b, -near.y0, -near.x0) for b in (b.intersect(near) for b in [*self.keep_out[k], box])
                if b is not None]
        if near.shape[0] < t or near.shape[1] < t:  # no tile fits beside it: padded to a tile, the sampler's
            covered = np.zeros(near.shape, bool)  # tiles would reach it
        else:
            covered = covered_by_tiles(tile_starts_clear(near.shape, t, keep), t, near.shape)
        return inner, mask[inner.slices] & covered[_shift(inner, -near.y0, -near.x0).slices]

    def trial(self, box: Box) -> tuple[int, dict[int, tuple[Box, np.ndarray]]]:
        """(labelled pixels no longer covered if ``box`` (level pixels) is held out, the changes to apply)."""
        changes = {k: self.change(k, b) for k, b in self.local(box).items()}
        lost = sum(int(np.count_nonzero(self.cover[k][inner.slices])) - int(np.count_nonzero(after))
                   for k, (inner, after) in changes.items())
        return lost, changes

    def hold(self, box: Box, changes: dict[int, tuple[Box, np.ndarray]]) -> None:
        """Hold ``box`` out: apply its changes."""
        for k, local in self.local(box).items():
            inner, after = changes[k]
            self.cover[k][inner.slices] = after
            self.keep_out[k].append(local)

    def training_patch(self, k: int) -> Patch:
        """Patch ``k`` with only its coverable labelled pixels as tile centres and its held-out cells kept out."""
        patch = self.patches[k]
        if not self.keep_out[k]:
            return patch
        keep_out = tuple(self.keep_out[k])
        if patch.labels is None:
            return replace(patch, keep_out=keep_out, _labelled=np.flatnonzero(self.cover[k].ravel()))
        labels = np.where(self.cover[k], patch.labels, IGNORE_INDEX).astype(patch.labels.dtype)
        return replace(patch, labels=labels, keep_out=keep_out, _labelled=None)


def split_patches(patches: Sequence[Patch], tile: int, gap: int, *, fraction: float = HOLDOUT,
                  seed: int = 0) -> Split:
    """Cut the labelled pixels of ``patches`` into training patches and held-out cells (see the module docstring).

    Deterministic for a given ``seed``; ``fraction`` 0 holds nothing out.
    """
    masks = [_labelled_mask(p) for p in patches]
    labelled = sum(int(np.count_nonzero(m)) for m in masks)
    side = cell_side(tile)
    cells = _cells(masks, side, tile) if fraction > 0 else []
    layout = _Layout(patches, masks, tile, gap)
    held: list[Cell] = []
    if len(cells) >= MIN_CELLS:
        target, held_pixels, unused = fraction * labelled, 0, 0
        for i in np.random.default_rng(seed).permutation(len(cells)):
            cell = cells[int(i)]
            if held_pixels + cell.labelled > 1.5 * target:
                continue
            box = _level(patches[cell.patch], cell.box)
            lost, changes = layout.trial(box)
            if unused + lost - cell.labelled > held_pixels + cell.labelled:
                continue  # keeping tiles clear of it would leave more labels unused than are held out
            layout.hold(box, changes)
            held.append(cell)
            held_pixels, unused = held_pixels + cell.labelled, unused + lost - cell.labelled
            if held_pixels >= target:
                break
    train = [layout.training_patch(k) for k in range(len(patches))]
    split = Split(train, held, list(patches), side, gap, labelled, sum(len(p.labelled) for p in train))
    split.note = _note(split, len(cells), fraction)
    return split


def _shift(box: Box, dy: int, dx: int) -> Box:
    return Box(box.y0 + dy, box.y1 + dy, box.x0 + dx, box.x1 + dx)


def _level(patch: Patch, box: Box) -> Box:
    """A box in a patch's pixels in level pixels."""
    return _shift(box, *patch.origin)


def _note(split: Split, cells: int, fraction: float) -> str:
    """What was held out, in words; or why nothing was."""
    if split.held_out:
        unused = split.labelled - split.training - split.held
        gap = f"; {unused:,} px beside them left unused" if unused else ""
        return (f"held out {len(split.held_out)} of {cells} labelled cells of {split.cell} px "
                f"({split.held / split.labelled:.0%} of the labelled pixels, a {split.gap}-px gap to training "
                f"tiles{gap})")
    if fraction <= 0:
        return "nothing held out (holdout 0): trained on every label, no held-out score"
    if cells < MIN_CELLS:
        return (f"too little is labelled to hold any out ({cells} labelled cells of {split.cell} px, {MIN_CELLS} "
                "needed): trained on all of it, with no held-out score")
    return ("no labelled cell could be held out without leaving more labels unused than it holds: trained on all "
            "of them, with no held-out score")
