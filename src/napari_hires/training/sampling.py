"""Training tiles from a pyramid level and its labels: regions read once, tiles drawn around labelled pixels.

Label convention: model classes are ``0 .. K-1`` and ``ignore_index`` (255 by default) marks unlabelled pixels, which
never count in the loss, so a corrected window, a few scribbles or a sparse layer all train the model. A scribble
layer where 0 means "no label" is read with ``zero_is_unlabelled=True``: value ``v > 0`` is class ``v - 1``.
Given neither (``None``), labels that look painted on an empty napari layer are refused, since reading them with 0
as a class trains every unpainted pixel as class 0: see :func:`zero_convention` for the rule.
Training regions are level-0 boxes ``(y0, y1, x0, x1)`` (e.g. the windows a user corrected) or, without them, the
whole level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from napari_hires.engine.intensity import InputRange
from napari_hires.engine.source import ImageSource, as_source
from napari_hires.engine.tiling import Box
from napari_hires.errors import HiresError

IGNORE_INDEX = 255
#: Largest region (pixels) read into memory at once; bigger images train on regions or random windows of them.
MAX_REGION_PIXELS = 2**26
#: Side of the random windows drawn from an image too large to read whole (self-supervised training).
RANDOM_WINDOW = 1024
#: Labels look like scribbles when 0 covers at least this share of their pixels and two or more values are painted.
SCRIBBLE_ZERO_SHARE = 0.9

Region = tuple[int, int, int, int]


@dataclass
class Patch:
    """One training region in memory: (y, x, c) pixels and (y, x) classes (``None`` for self-supervised data)."""

    image: np.ndarray
    labels: np.ndarray | None
    origin: tuple[int, int]  # (y, x) of the region in level pixels
    _labelled: np.ndarray | None = field(default=None, repr=False)
    input_range: InputRange | None = None  # the image's raw values that are the model's 0..1 (None: its dtype's)
    zero_is_unlabelled: bool | None = None  # how the labels were read (None: no labels)
    keep_out: tuple[Box, ...] = ()  # patch pixels no training tile may touch (held-out cells and their gap)

    @property
    def labelled(self) -> np.ndarray:
        """Flat indices of labelled pixels (every pixel for unlabelled data), computed once."""
        if self._labelled is None:
            if self.labels is None:
                self._labelled = np.arange(self.image.shape[0] * self.image.shape[1])
            else:
                self._labelled = np.flatnonzero(self.labels.ravel() != IGNORE_INDEX)
        return self._labelled


def to_classes(raw: np.ndarray, num_classes: int | None, *, ignore_index: int = IGNORE_INDEX,
               zero_is_unlabelled: bool = False, name: str = "labels") -> np.ndarray:
    """Label values -> uint8 model classes with ``IGNORE_INDEX`` for unlabelled pixels (see the module docstring)."""
    raw = np.asarray(raw)
    if raw.dtype.kind not in "iub":
        raise HiresError(f"{name} must hold integer classes, not {raw.dtype}; paint labels, not an image")
    raw = raw.astype(np.int64)
    unlabelled = raw == 0 if zero_is_unlabelled else raw == ignore_index
    classes = raw - 1 if zero_is_unlabelled else raw
    bad = ~unlabelled & ((classes < 0) | (num_classes is not None and classes >= num_classes) | (classes >= 255))
    if bad.any():
        value = int(raw[bad][0])
        top = f"{num_classes - 1}" if num_classes is not None else "254"
        shift = " (with zero_is_unlabelled, label v is class v-1)" if zero_is_unlabelled else ""
        raise HiresError(
            f"{name} hold the value {value}, which is neither a class 0..{top}{shift} nor the unlabelled value "
            f"{0 if zero_is_unlabelled else ignore_index}; relabel it, or choose a model with more classes"
        )
    out = classes.astype(np.uint8)
    out[unlabelled] = IGNORE_INDEX
    return out


def zero_convention(raws: Sequence[np.ndarray], zero_is_unlabelled: bool | None, *,
                    ignore_index: int = IGNORE_INDEX) -> bool:
    """Whether 0 is unlabelled in the label values ``raws``: as given, else decided, or refused when ambiguous.

    Undecided (``None``), 0 is a class unless the labels look painted on an empty napari layer: no pixel is
    ``ignore_index``, 0 covers at least ``SCRIBBLE_ZERO_SHARE`` of them and two or more non-zero values occur.
    Those are refused, since either reading is plausible and the wrong one trains nonsense without a word.
    """
    if zero_is_unlabelled is not None:
        return zero_is_unlabelled
    total = sum(r.size for r in raws)
    if not total or any((r == ignore_index).any() for r in raws):
        return False
    zeros = sum(int(np.count_nonzero(r == 0)) for r in raws)
    painted = set().union(*(np.unique(r[r != 0]).tolist() for r in raws))
    if zeros >= SCRIBBLE_ZERO_SHARE * total and len(painted) >= 2:
        raise HiresError(
            f"the labels look like scribbles: 0 covers {zeros / total:.1%} of them, with values "
            f"{', '.join(str(v) for v in sorted(painted)[:6])} painted; say what 0 means: --zero-is-unlabelled "
            "(zero_is_unlabelled=True, \"0 means unlabelled\": 0 is not trained on and label v is class v-1) or "
            "--zero-is-class (zero_is_unlabelled=False: 0 is class 0, every unpainted pixel trains as it)"
        )
    return False


def convention_note(zero_is_unlabelled: bool, ignore_index: int = IGNORE_INDEX) -> str:
    """The label convention in use, in words, for the training summary."""
    if zero_is_unlabelled:
        return "labels: 0 is unlabelled, label v is class v-1"
    return f"labels: 0 is a class, {ignore_index} is unlabelled"


def _level_box(region: Sequence[int], factor: tuple[float, float], bounds: Box) -> Box:
    """A level-0 region (y0, y1, x0, x1) in pixels of a level with downsampling ``factor``, checked against it."""
    try:
        y0, y1, x0, x1 = (int(v) for v in region)
    except (TypeError, ValueError):
        raise HiresError(f"a training region is four integers y0 y1 x0 x1 (level-0 pixels), got {region!r}") from None
    fy, fx = factor
    box = Box(math.floor(y0 / fy), math.ceil(y1 / fy), math.floor(x0 / fx), math.ceil(x1 / fx))
    inside = box.intersect(bounds)
    if y1 <= y0 or x1 <= x0 or inside is None or inside != box:
        raise HiresError(f"training region {region!r} is empty or outside the image (level-0 size "
                         f"{round(bounds.y1 * fy)} x {round(bounds.x1 * fx)}); give y0 < y1 and x0 < x1 inside it")
    return box


def random_regions(shape: tuple[int, int], count: int, side: int, rng: np.random.Generator) -> list[Box]:
    """``count`` windows of ``side`` px at random places of a level of ``shape`` (seeded, for huge images)."""
    h, w = shape
    sy, sx = min(side, h), min(side, w)
    return [Box(y, y + sy, x, x + sx) for y, x in
            zip(rng.integers(0, h - sy + 1, count), rng.integers(0, w - sx + 1, count))]


def _source(data: Any, level: int, what: str) -> ImageSource:
    """A level of a Pyramid, a path or an array as an engine source."""
    try:
        return as_source(data, level)
    except HiresError as err:
        raise HiresError(f"{what}: {err}") from None


def read_patches(
    image: Any,
    labels: Any = None,
    *,
    level: int = 0,
    regions: Sequence[Region] | None = None,
    num_classes: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    zero_is_unlabelled: bool | None = False,
    seed: int = 0,
) -> list[Patch]:
    """Read the training regions of ``image`` (and ``labels``, same level) into memory as :class:`Patch` es.

    ``image``/``labels`` are Pyramids, paths or arrays; ``regions`` are level-0 boxes. Without regions the whole
    level is read, or, for unlabelled data on an image larger than ``MAX_REGION_PIXELS``, random windows of it.
    ``zero_is_unlabelled=None`` decides the label convention by :func:`zero_convention`.
    """
    src = _source(image, level, "training image")
    lab = None if labels is None else _source(labels, level, "training labels")
    if lab is not None and lab.shape != src.shape:
        raise HiresError(f"the labels ({lab.shape[0]} x {lab.shape[1]} at level {level}) do not cover the image "
                         f"({src.shape[0]} x {src.shape[1]}); give the labels drawn on this image")
    if lab is not None and lab.channels != 1:
        raise HiresError(f"training labels must be one channel, got {lab.channels}; pass a Labels layer or store")
    factor = _factor(image, level)
    if regions:
        boxes = [_level_box(r, factor, src.bounds) for r in regions]
    elif src.shape[0] * src.shape[1] <= MAX_REGION_PIXELS:
        boxes = [src.bounds]
    elif lab is None:
        count = max(1, MAX_REGION_PIXELS // (4 * RANDOM_WINDOW**2))
        boxes = random_regions(src.shape, count, RANDOM_WINDOW, np.random.default_rng(seed))
    else:
        raise HiresError(f"the image is {src.shape[0]} x {src.shape[1]} pixels at level {level}, too large to train "
                         "on whole; give the corrected regions (y0 y1 x0 x1) to train on")
    raws = None if lab is None else [lab.read(box)[..., 0] for box in boxes]
    zero = None if raws is None else zero_convention(raws, zero_is_unlabelled, ignore_index=ignore_index)
    patches = []
    for k, box in enumerate(boxes):
        pixels = src.read(box)
        classes = None
        if raws is not None:
            classes = to_classes(raws[k], num_classes, ignore_index=ignore_index, zero_is_unlabelled=zero,
                                 name=f"labels in {box}")
            raws[k] = None  # freed as soon as converted
        patches.append(Patch(pixels, classes, (box.y0, box.x0), input_range=src.input_range,
                             zero_is_unlabelled=zero))
    if lab is not None and not any(len(p.labelled) for p in patches):
        raise HiresError("the training regions hold no labelled pixels; paint or correct some labels first")
    return patches


def _factor(image: Any, level: int) -> tuple[float, float]:
    """(y, x) downsampling of ``level`` relative to level 0 (1 for plain arrays)."""
    factors = getattr(image, "downsample_factors", None)
    return factors()[level] if callable(factors) else (1.0, 1.0)


def tile_starts_clear(shape: tuple[int, int], tile: int, keep_out: Sequence[Box]) -> np.ndarray:
    """Which top-left corners (y, x) of a ``tile`` x ``tile`` window inside ``shape`` touch none of ``keep_out``:
    a boolean (h - tile + 1, w - tile + 1) map."""
    h, w = shape
    clear = np.ones((max(0, h - tile + 1), max(0, w - tile + 1)), bool)
    for box in keep_out:
        clear[max(0, box.y0 - tile + 1):max(0, box.y1), max(0, box.x0 - tile + 1):max(0, box.x1)] = False
    return clear


def covered_by_tiles(clear: np.ndarray, tile: int, shape: tuple[int, int]) -> np.ndarray:
    """Which pixels of ``shape`` some tile starting at a ``clear`` corner covers: a boolean (h, w) map."""
    h, w = shape
    table = np.zeros((clear.shape[0] + 1, clear.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(clear, axis=0), axis=1, out=table[1:, 1:])
    # the corners of tiles covering pixel p along one axis: [p - tile + 1, p], within the map
    y_lo, y_hi = np.clip(np.arange(h) - tile + 1, 0, clear.shape[0]), np.clip(np.arange(h) + 1, 0, clear.shape[0])
    x_lo, x_hi = np.clip(np.arange(w) - tile + 1, 0, clear.shape[1]), np.clip(np.arange(w) + 1, 0, clear.shape[1])
    count = (table[np.ix_(y_hi, x_hi)] - table[np.ix_(y_lo, x_hi)] - table[np.ix_(y_hi, x_lo)]
             + table[np.ix_(y_lo, x_lo)])
    return count > 0


class TileSampler:
    """Draws square tiles from patches, each around a random labelled pixel, so sparse labels are found quickly.

    Patches smaller than the tile are padded (reflected pixels, unlabelled classes). Patches are chosen in
    proportion to their labelled pixels. No tile touches a patch's ``keep_out`` boxes (the held-out cells of
    :mod:`napari_hires.training.split`, which leaves only labelled pixels some such tile covers).
    """

    def __init__(self, patches: Sequence[Patch], tile: int) -> None:
        if not patches:
            raise HiresError("no training regions to sample tiles from")
        if tile < 8:
            raise HiresError(f"training tiles must be at least 8 px, got {tile}")
        self.tile = tile
        self.patches = [_pad(p, tile) for p in patches]
        self._clear = [tile_starts_clear(p.image.shape[:2], tile, p.keep_out) if p.keep_out else None
                       for p in self.patches]
        counts = np.array([len(p.labelled) for p in self.patches], dtype=np.float64)
        self.weights = counts / counts.sum()

    @property
    def labelled(self) -> bool:
        return self.patches[0].labels is not None

    @property
    def input_range(self) -> InputRange | None:
        """How the tiles' pixels are scaled for the model: as the engine scales their image at inference."""
        return self.patches[0].input_range

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        """``n`` tiles: pixels (n, tile, tile, c) and classes (n, tile, tile) or ``None`` for unlabelled data."""
        t = self.tile
        images, labels = [], []
        for k in rng.choice(len(self.patches), size=n, p=self.weights):
            p = self.patches[k]
            h, w = p.image.shape[:2]
            cy, cx = divmod(int(p.labelled[rng.integers(len(p.labelled))]), w)
            y0 = int(np.clip(cy - rng.integers(t), 0, h - t))
            x0 = int(np.clip(cx - rng.integers(t), 0, w - t))
            clear = self._clear[k]
            if clear is not None and not clear[y0, x0]:  # one of the clear tiles over the pixel instead
                ys, xs = max(0, cy - t + 1), max(0, cx - t + 1)
                free = np.argwhere(clear[ys:cy + 1, xs:cx + 1])
                dy, dx = free[rng.integers(len(free))]
                y0, x0 = ys + int(dy), xs + int(dx)
            images.append(p.image[y0:y0 + t, x0:x0 + t])
            if p.labels is not None:
                labels.append(p.labels[y0:y0 + t, x0:x0 + t])
        return np.stack(images), (np.stack(labels) if labels else None)


def _pad(patch: Patch, tile: int) -> Patch:
    """``patch`` padded at the bottom/right to at least ``tile`` on each side."""
    h, w = patch.image.shape[:2]
    ph, pw = max(0, tile - h), max(0, tile - w)
    if not (ph or pw):
        return patch
    mode = "reflect" if ph < h and pw < w else "edge"
    image = np.pad(patch.image, ((0, ph), (0, pw), (0, 0)), mode=mode)
    labels = None if patch.labels is None else np.pad(patch.labels, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
    if labels is None:  # unlabelled data: only the real pixels (those not held out) are tile centres
        ys, xs = np.divmod(patch.labelled, w)
        return replace(patch, image=image, _labelled=ys * (w + pw) + xs)
    return replace(patch, image=image, labels=labels, _labelled=None)


class PairedTileSampler(TileSampler):
    """Tiles of degraded images with their clean targets, for supervised restoration.

    Each patch holds the degraded and clean pixels side by side along channels, so both are cut at the same place;
    ``sample`` returns them apart: (degraded (n, t, t, c), clean (n, t, t, c)), which :func:`augment` keeps paired.
    """

    def __init__(self, degraded: Sequence[Patch], clean: Sequence[Patch], tile: int) -> None:
        if len(degraded) != len(clean) or any(d.image.shape != c.image.shape for d, c in zip(degraded, clean)):
            raise HiresError("degraded and clean training regions must match one to one in shape")
        joined = [Patch(np.concatenate([d.image, c.image], axis=-1), None, d.origin, input_range=d.input_range)
                  for d, c in zip(degraded, clean)]
        super().__init__(joined, tile)
        self.channels = degraded[0].image.shape[-1]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        both, _ = super().sample(n, rng)
        return both[..., :self.channels], both[..., self.channels:]
