"""Measure a trained model's halo: how far from a tile edge its output still differs from what the model gives
when the same pixel lies deep inside a tile.

A theoretical receptive field overstates what a trained network uses (its effective receptive field decays fast),
and attention models see the whole tile (MaxViT's grid, HCT's Performer), so their output depends on the input's
size: whole-image output is not the reference for a tiled run. The reference of a pixel is the output of the tile,
among tiles sliding over the image an eighth of a tile apart, in which it lies most central; the halo is the distance
from a tile edge beyond which every tile's output stays within a tolerance of that reference. What remains far from
every edge (the *floor*) is the tiles' disagreement with each other, which no overlap removes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from napari_hires.engine.runner import TileRunner
from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel


@dataclass
class HaloMeasurement:
    """The measured halo, the error level it is judged against, and the error profile it came from."""

    halo: int  # px per side: where the error first falls to within ``floor + max(tolerance, floor / 4)``
    floor: float  # median error away from tile edges: tiles with different context disagree this much
    tolerance: float  # allowed error above the floor (probability, or pixel value for restoration)
    tile: int
    profile: list[float]  # mean error at each distance 0 .. tile // 2 - 1 from the nearest tile edge
    label_agreement: float | None  # segmentation: fraction of labels equal to the reference's beyond the halo

    def as_card_entry(self) -> dict:
        """The facts stored in a model card (the profile's first 64 px, rounded, so that cards stay readable)."""
        out = asdict(self)
        out["profile"] = [round(v, 5) for v in self.profile[:64]]
        out["floor"] = round(self.floor, 6)
        if self.label_agreement is not None:
            out["label_agreement"] = round(self.label_agreement, 5)
        return out


def _distance_to_edge(side: int) -> np.ndarray:
    """Chebyshev distance of each pixel of a side x side tile to the tile's border (0 on the border)."""
    d = np.minimum(np.arange(side), np.arange(side)[::-1])
    return np.minimum.outer(d, d)


def _errors(out: torch.Tensor, ref: torch.Tensor, task: str) -> np.ndarray:
    """Per-pixel error between two outputs of the same pixels (max over classes, or mean over channels)."""
    diff = (out - ref).abs()
    return (diff.amax(0) if task == "segmentation" else diff.mean(0)).cpu().numpy()


def measure_halo(model: HiresModel, images: Sequence[np.ndarray], *, tile: int | None = None,
                 tolerance: float | None = None, device: str = "auto") -> HaloMeasurement:
    """Halo of ``model`` for ``tile`` (default: its tile size), measured on (y, x, c) ``images`` of >= 2 tiles a side.

    Over the central 2 x 2 tiles of each image, tiles an eighth of a tile apart are predicted alone (81 of them);
    every pixel of the central tile-sized square is compared across tiles. ``tolerance`` defaults to 0.01 in probability
    (segmentation) or half a grey level of 8-bit data (restoration).
    """
    if model.task == "classification":
        raise HiresError("a classifier gives one value per tile: its tiles do not overlap, so it has no halo to measure")
    runner = TileRunner(model, device=device, precision="fp32", batch=1)
    tile = -(-(tile or model.tile_size) // model.input_multiple) * model.input_multiple
    if tolerance is None:
        tolerance = 0.01 if model.task == "segmentation" else 0.5
    step, half = tile // 8, tile // 2
    dist = _distance_to_edge(tile)
    sums, counts = np.zeros(half), np.zeros(half)
    same_label = np.zeros(half)
    for image in images:
        if min(image.shape[:2]) < 2 * tile:
            raise HiresError(f"measuring a halo needs images of at least 2 tiles a side ({2 * tile} px), "
                             f"got {image.shape[0]} x {image.shape[1]}")
        cy, cx = image.shape[0] // 2 - tile, image.shape[1] // 2 - tile
        square = image[cy:cy + 2 * tile, cx:cx + 2 * tile]
        starts = range(0, tile + 1, step)
        outputs = {(y, x): runner.run_batch(square[None, y:y + tile, x:x + tile])[0].cpu()
                   for y in starts for x in starts}
        # reference: each pixel from the tile in which it lies deepest
        ref = torch.zeros((next(iter(outputs.values())).shape[0], 2 * tile, 2 * tile))
        depth = np.full((2 * tile, 2 * tile), -1)
        owner = np.full((2 * tile, 2 * tile), -1)
        for i, ((y, x), out) in enumerate(outputs.items()):
            view = depth[y:y + tile, x:x + tile]
            deeper = dist > view
            view[deeper] = dist[deeper]
            owner[y:y + tile, x:x + tile][deeper] = i
            mask = torch.from_numpy(deeper)
            ref[:, y:y + tile, x:x + tile][:, mask] = out[:, mask]
        inner = np.zeros((2 * tile, 2 * tile), dtype=bool)
        inner[half:half + tile, half:half + tile] = True  # pixels that have a tile centred on them
        for i, ((y, x), out) in enumerate(outputs.items()):
            keep = inner[y:y + tile, x:x + tile] & (owner[y:y + tile, x:x + tile] != i)  # not against itself
            d, here = dist[keep], ref[:, y:y + tile, x:x + tile]
            err = _errors(out, here, model.task)[keep]
            sums += np.bincount(d, weights=err, minlength=half)[:half]
            counts += np.bincount(d, minlength=half)[:half]
            if model.task == "segmentation":
                same = (out.argmax(0) == here.argmax(0)).numpy()[keep]
                same_label += np.bincount(d, weights=same, minlength=half)[:half]
    profile = sums / np.maximum(counts, 1)
    floor = float(np.median(profile[tile // 16:3 * tile // 8]))  # depths every pixel is compared at
    # where the edge effect first falls to the floor (within a quarter of it: the floor itself varies with the
    # tiles' offsets, and a model whose tiles disagree by that much needs a cross-fade, not more halo)
    halo = int(np.argmax(profile <= floor + max(tolerance, 0.25 * floor)))
    agreement = None
    if model.task == "segmentation":
        agreement = float(same_label[halo:].sum() / max(counts[halo:].sum(), 1))
    return HaloMeasurement(halo=halo, floor=floor, tolerance=float(tolerance), tile=tile,
                           profile=[float(v) for v in profile], label_agreement=agreement)
