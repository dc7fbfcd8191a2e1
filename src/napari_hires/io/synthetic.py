"""A procedural H&E-like whole-slide image of any size with ground-truth labels, rendered lazily chunk by chunk.

The slide is a continuous scene in level-0 pixel coordinates: tissue islands (thresholded low-frequency noise),
epithelial nests with lumens, fibrous stroma, and nuclei placed one per cell of a hashed jittered 16-px grid.
Every pyramid level is rendered directly by box-filtering that scene for its pixel footprint 2^k (fine noise
octaves averaged away, edges and nuclei drawn with their coverage, nuclei below pixel size by their expected
coverage), so level k matches level 0 averaged over 2^k x 2^k blocks and any chunk renders alone, exactly the
same as inside a larger read. It is the demo's data, the tests' data and the training data of shipped weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import dask.array as da
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.special import ndtr

from napari_hires.errors import HiresError
from napari_hires.io import _procedural as pr
from napari_hires.io.physical import PixelSize
from napari_hires.io.pyramid import Pyramid

DEFAULT_SIZE: tuple[int, int] = (131072, 131072)  # ~17 gigapixels
CLASS_NAMES: dict[int, str] = {0: "background", 1: "stroma", 2: "epithelium", 3: "nucleus"}
CLASS_COLORS: dict[int, tuple[float, float, float, float]] = {
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.95, 0.45, 0.65, 1.0),
    2: (0.35, 0.55, 0.95, 1.0),
    3: (1.0, 0.85, 0.1, 1.0),
}
VARIANTS = ("clean", "noisy", "blurred")
#: What a level-0 pixel stands for: a 20x scan (0.5 um/px), at which its 8-12 px epithelial nuclei measure 4-6 um.
#: The scale stays in pixels (the slide is shown and addressed in pixels); this is the Pyramid's nominal pixel size.
PIXEL_SIZE = PixelSize(0.5, "micrometer")
#: Degradations at level 0; level k gets them scaled by 2^-k (what averaging 2^k x 2^k level-0 pixels does).
NOISE_SIGMA = 20.0
BLUR_SIGMA = 2.0

_CELL = 16  # nucleus grid cell (level-0 px)
#: Two interleaved nucleus grids (offsets in px): crowded, irregular nuclei. Both offsets are multiples of 8, so
#: every pixel of levels 0..3 lies in one cell of each grid and needs only that cell's nucleus.
_GRIDS = (0, 8)
_MAX_ENUM = 8  # largest footprint at which nuclei are drawn one by one; coarser levels use expected coverage
_EDGE = 0.6  # extra softness of region edges at level 0 (px)
# field ids for hashing
_TISSUE, _REGION, _EPI, _STAIN, _ANGLE, _FIBRE, _STROMA_TEX, _EPI_TEX, _CHROMATIN, _GLASS, _NUCLEUS, _NOISE = range(
    1, 13
)
_LUMEN = 0.55  # nest-pattern level above which a nest is hollow (lumen)
# nuclei per class at the cell centre: (probability a cell holds one, radius a + b*u, aspect range)
_NUC = {1: (0.05, 2.4, 1.4, 0.4, 1.8), 2: (0.62, 3.8, 2.2, 0.7, 0.65)}
# colours (RGB 0..255)
_GLASS_RGB = np.array([243.0, 242.0, 245.0], np.float32)
_STROMA_PALE = np.array([247.0, 200.0, 224.0], np.float32)
_STROMA_DEEP = np.array([214.0, 112.0, 170.0], np.float32)
_EPI_LIGHT = np.array([206.0, 150.0, 204.0], np.float32)
_EPI_DARK = np.array([150.0, 88.0, 165.0], np.float32)
_LUMEN_RGB = np.array([240.0, 228.0, 238.0], np.float32)
_NUC_LIGHT = np.array([125.0, 78.0, 165.0], np.float32)
_NUC_DARK = np.array([48.0, 22.0, 95.0], np.float32)
_STAIN_SHIFT = np.array([-10.0, -14.0, -4.0], np.float32)


@dataclass(frozen=True)
class _Scene:
    """The slide's global parameters: everything a chunk needs besides its coordinates."""

    height: int
    width: int
    seed: int

    @property
    def tissue_scale(self) -> float:
        """Largest wavelength of the tissue mask: a few islands across the slide, whatever its size."""
        return max(1024.0, max(self.height, self.width) / 5.0)

    def k(self, field: int, *more: int) -> int:
        return pr.key(self.seed, field, *more)


# ---------------------------------------------------------------------------------------------- validation
def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise HiresError(f"synthetic slide size must be two integers (height, width), got {size!r}") from None
    if h < 1 or w < 1:
        raise HiresError(f"synthetic slide size must be positive, got {size!r}; pass e.g. (4096, 4096)")
    return h, w


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise HiresError(f"unknown synthetic slide variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def _check_region(level: int, y0: int, y1: int, x0: int, x1: int) -> None:
    if level < 0:
        raise HiresError(f"pyramid level must be >= 0, got {level}")
    if y1 <= y0 or x1 <= x0:
        raise HiresError(f"empty region y {y0}:{y1}, x {x0}:{x1}; the end must be greater than the start")


# ---------------------------------------------------------------------------------------------- the scene
def _centres(a0: int, a1: int, f: int) -> np.ndarray:
    """Level-0 coordinates of the centres of level pixels a0..a1-1 with footprint f."""
    return (np.arange(a0, a1, dtype=np.float64) + 0.5) * f - 0.5


def _border(c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Ramp 0 at the slide edge -> 1 inside (margin 8 %) and its derivative, so tissue keeps off the edges."""
    m = 0.08 * n
    d = np.minimum(c + 0.5, n - 0.5 - c)
    b = np.clip(d / m, 0.0, 1.0)
    db = np.where((d > 0) & (d < m), np.where(c + 0.5 < n - 0.5 - c, 1.0, -1.0) / m, 0.0)
    return b, db


def _tissue_field(sc: _Scene, y: np.ndarray, x: np.ndarray, f: float):
    """Tissue level set (>= 0 inside tissue), its gradient and averaged-away variance."""
    t, gy, gx, res = pr.fbm(y, x, sc.tissue_scale, 24.0, f, sc.k(_TISSUE), grad=True)
    by, dby = _border(y, sc.height)
    bx, dbx = _border(x, sc.width)
    t = t - 0.08 - 1.5 * (1.0 - by * bx)
    return t, gy + 1.5 * dby * bx, gx + 1.5 * by * dbx, res


def _epi_fields(sc: _Scene, y: np.ndarray, x: np.ndarray, f: float):
    """Epithelium level set (>= 0 in nests) and lumen level set (>= 0 where a nest is hollow).

    Both with gradient and averaged-away variance: the nest pattern plus a slide-scale tumour-density field,
    so some regions hold glands with lumens, others solid sheets, others plain stroma.
    """
    n, gy, gx, res = pr.fbm(y, x, 640.0, 20.0, f, sc.k(_EPI), grad=True)
    lam = sc.tissue_scale / 2.0
    m, my, mx, mres = pr.fbm(y, x, lam, lam / 2.0, f, sc.k(_REGION), grad=True)
    epi = (n + 1.2 * m - 0.3, gy + 1.2 * my, gx + 1.2 * mx, res + 1.44 * mres)
    return epi, (n - _LUMEN, gy, gx, res)


def _classes(sc: _Scene, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Class of the level-0 scene at points (y, x): 0 background or lumen, 1 stroma, 2 epithelium."""
    t = _tissue_field(sc, y, x, 1.0)[0]
    epi, lumen = _epi_fields(sc, y, x, 1.0)
    cls = np.where(epi[0] >= 0.0, 2, 1).astype(np.uint8)
    cls[(t < 0.0) | ((epi[0] >= 0.0) & (lumen[0] >= 0.0))] = 0
    return cls


def _alpha(v: np.ndarray, gy: np.ndarray, gx: np.ndarray, res: float, f: float) -> np.ndarray:
    """Coverage of {v >= 0} over a pixel of footprint f: a step blurred by the box and the averaged-away detail."""
    sigma = np.sqrt((gy * gy + gx * gx) * (_EDGE**2 + f * f / 12.0) + res + 1e-12)
    return ndtr(v / sigma)


def _nucleus_cells(sc: _Scene, grid: int, cy: np.ndarray, cx: np.ndarray) -> dict[str, np.ndarray]:
    """Nucleus of each cell (rows cy x columns cx) of nucleus grid ``grid``: existence, centre, semi-axes, darkness."""
    off = _GRIDS[grid]
    lo_y = cy[:, None] * _CELL - off - 0.5  # level-0 coordinate of the cell's top edge
    lo_x = cx[None, :] * _CELL - off - 0.5
    cls = _classes(sc, lo_y + _CELL / 2.0, lo_x + _CELL / 2.0)
    h = pr.hash2(sc.k(_NUCLEUS, grid), cy[:, None], cx[None, :])
    u = [pr.unit(pr.mix(h ^ np.uint64(i + 1))) for i in range(6)]
    prob = np.zeros(cls.shape)
    r = np.ones(cls.shape)
    aspect = np.ones(cls.shape)
    for c, (p, a, b, asp0, asp1) in _NUC.items():
        sel = cls == c
        prob[sel] = p
        r[sel] = a + b * u[1][sel]
        aspect[sel] = np.sqrt(asp0 + asp1 * u[2][sel])
    ry, rx = r * aspect, r / aspect
    return {
        "exists": u[0] < prob,
        "ry": ry,
        "rx": rx,
        "cy": lo_y + ry + (_CELL - 2.0 * ry) * u[3],
        "cx": lo_x + rx + (_CELL - 2.0 * rx) * u[4],
        "dark": u[5],
    }


def _nuclei_at(
    sc: _Scene, grid: int, py: np.ndarray, px: np.ndarray
) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Nuclei of the grid cells holding level-0 pixel rows py and columns px, and each pixel's cell index."""
    off = _GRIDS[grid]
    cy, iy = np.unique((py + off) // _CELL, return_inverse=True)
    cx, ix = np.unique((px + off) // _CELL, return_inverse=True)
    return _nucleus_cells(sc, grid, cy, cx), np.ix_(iy, ix)


def _expected_nuclei(a_stroma: np.ndarray, a_epi: np.ndarray) -> np.ndarray:
    """Mean nuclear coverage where nuclei are about a pixel or smaller: density x mean area, over all grids."""
    cov = np.zeros(a_stroma.shape)
    for c, a_cls in ((1, a_stroma), (2, a_epi)):
        p, a, b, _, _ = _NUC[c]
        cov += a_cls * (len(_GRIDS) * p * math.pi * (a * a + a * b + b * b / 3.0) / _CELL**2)
    return np.minimum(cov, 1.0)


def _stroma(sc: _Scene, y: np.ndarray, x: np.ndarray, f: float) -> np.ndarray:
    """Stroma colour: wavy collagen fibre bundles in two drifting orientations over a soft mottle."""
    mottle = pr.fbm(y, x, 128.0, 16.0, f, sc.k(_STROMA_TEX))[0]
    fib = np.zeros(mottle.shape)
    if pr.attenuation(f, 8.0) > 0.0:
        warp = 70.0 * pr.fbm(y, x, 360.0, 90.0, 1.0, sc.k(_ANGLE))[0]
        mix = np.clip(0.5 + 2.5 * pr.value_noise(y, x, 900.0, sc.k(_ANGLE, 1))[0], 0.0, 1.0)
        for i, (lam, amp) in enumerate(((8.0, 1.0), (4.0, 0.6), (2.0, 0.35))):
            att = pr.attenuation(f, lam)
            if att > 0.0:
                horizontal = pr.value_noise(y + warp, x / 7.0, lam, sc.k(_FIBRE, i))[0]
                vertical = pr.value_noise(y / 7.0, x + warp, lam, sc.k(_FIBRE, i + 10))[0]
                fib += (att * amp) * (horizontal * mix + vertical * (1.0 - mix))
    shade = 0.45 + 0.5 * fib + 0.35 * mottle
    return _STROMA_PALE + (_STROMA_DEEP - _STROMA_PALE) * shade[..., None]


def _render_clean(sc: _Scene, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Float RGB of level pixels [y0:y1, x0:x1] (may extend past the slide: the scene is unbounded)."""
    f = 2**level
    y = _centres(y0, y1, f)[:, None]
    x = _centres(x0, x1, f)[None, :]

    t, tgy, tgx, tres = _tissue_field(sc, y, x, f)
    a_t = _alpha(t, tgy, tgx, tres, f)
    epi_set, lumen_set = _epi_fields(sc, y, x, f)
    a_e = _alpha(*epi_set, f)
    a_l = a_e * _alpha(*lumen_set, f)  # lumens only inside nests

    gran = pr.fbm(y, x, 32.0, 2.0, f, sc.k(_EPI_TEX), gain=0.6)[0]
    epi = _EPI_LIGHT + (_EPI_DARK - _EPI_LIGHT) * (0.5 + 0.8 * gran)[..., None]
    tissue = _stroma(sc, y, x, f) * (1.0 - a_e)[..., None] + epi * (a_e - a_l)[..., None]
    tissue += _LUMEN_RGB * a_l[..., None]
    tissue += _STAIN_SHIFT * pr.fbm(y, x, 3000.0, 3000.0, f, sc.k(_STAIN))[0][..., None]
    glass = _GLASS_RGB + 4.0 * pr.fbm(y, x, 512.0, 64.0, f, sc.k(_GLASS))[0][..., None]
    rgb = glass * (1.0 - a_t)[..., None] + tissue * a_t[..., None]

    chrom = pr.fbm(y, x, 4.0, 2.0, f, sc.k(_CHROMATIN))[0]
    if f <= _MAX_ENUM:
        py = np.arange(y0, y1, dtype=np.int64) * f
        px = np.arange(x0, x1, dtype=np.int64) * f
        for grid in range(len(_GRIDS)):
            cells, at = _nuclei_at(sc, grid, py, px)
            cov = pr.ellipse_coverage(y - cells["cy"][at], x - cells["cx"][at], cells["ry"][at], cells["rx"][at], f)
            cov *= cells["exists"][at]
            nuc = _NUC_LIGHT + (_NUC_DARK - _NUC_LIGHT) * (0.3 + 0.55 * cells["dark"][at] + 0.35 * chrom)[..., None]
            rgb += (nuc - rgb) * cov[..., None]
    else:
        cov = _expected_nuclei(a_t * (1.0 - a_e), a_t * (a_e - a_l))
        nuc = _NUC_LIGHT + (_NUC_DARK - _NUC_LIGHT) * (0.575 + 0.35 * chrom)[..., None]
        rgb += (nuc - rgb) * cov[..., None]
    return rgb


def _degrade(sc: _Scene, level: int, y0: int, y1: int, x0: int, x1: int, variant: str) -> np.ndarray:
    """Float RGB of the variant: clean, plus per-pixel hashed noise, or blurred (rendered with a halo)."""
    if variant == "blurred":
        sigma = BLUR_SIGMA / 2**level
        halo = int(4.0 * sigma + 0.5)
        img = _render_clean(sc, level, y0 - halo, y1 + halo, x0 - halo, x1 + halo)
        img = gaussian_filter(img, sigma=(sigma, sigma, 0.0), mode="nearest")
        return img[halo : halo + y1 - y0, halo : halo + x1 - x0]
    img = _render_clean(sc, level, y0, y1, x0, x1)
    if variant == "noisy":
        gy = np.arange(y0, y1, dtype=np.int64)[:, None]
        gx = np.arange(x0, x1, dtype=np.int64)[None, :]
        for c in range(3):
            img[..., c] += (NOISE_SIGMA / 2**level) * pr.pixel_normal(sc.k(_NOISE, level, c), gy, gx)
    return img


# ---------------------------------------------------------------------------------------------- public API
def render_region(
    level: int,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    *,
    size: tuple[int, int],
    seed: int = 0,
    variant: str = "clean",
) -> np.ndarray:
    """RGB uint8 pixels [y0:y1, x0:x1] of pyramid ``level`` of the synthetic slide, rendered from scratch."""
    h, w = _check_size(size)
    _check_variant(variant)
    _check_region(level, y0, y1, x0, x1)
    img = _degrade(_Scene(h, w, int(seed)), int(level), int(y0), int(y1), int(x0), int(x1), variant)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_labels(
    level: int, y0: int, y1: int, x0: int, x1: int, *, size: tuple[int, int], seed: int = 0
) -> np.ndarray:
    """Ground-truth classes (uint8, see CLASS_NAMES) of level pixels [y0:y1, x0:x1]: level 0 sampled at [::2^k]."""
    h, w = _check_size(size)
    _check_region(level, y0, y1, x0, x1)
    sc = _Scene(h, w, int(seed))
    f = 2 ** int(level)
    py = np.arange(int(y0), int(y1), dtype=np.int64) * f
    px = np.arange(int(x0), int(x1), dtype=np.int64) * f
    y = py.astype(np.float64)[:, None]
    x = px.astype(np.float64)[None, :]
    labels = _classes(sc, y, x)
    for grid in range(len(_GRIDS)):
        cells, at = _nuclei_at(sc, grid, py, px)
        dy = (y - cells["cy"][at]) / cells["ry"][at]
        dx = (x - cells["cx"][at]) / cells["rx"][at]
        labels[cells["exists"][at] & (dy * dy + dx * dx < 1.0)] = 3
    return labels


def level_shapes(size: tuple[int, int], min_size: int = 512) -> list[tuple[int, int]]:
    """(height, width) of every level: halved (rounding up) until both sides are <= min_size."""
    h, w = _check_size(size)
    if min_size < 1:
        raise HiresError(f"min_size must be >= 1, got {min_size}")
    shapes = [(h, w)]
    while max(shapes[-1]) > min_size:
        k = len(shapes)
        shapes.append((-(-h // 2**k), -(-w // 2**k)))
    return shapes


def _image_block(block_id=None, *, sc: _Scene, level: int, shape: tuple[int, int], chunk: int, variant: str):
    """One dask chunk of an image level: it knows only its block index, hence its coordinates."""
    y0, x0 = block_id[0] * chunk, block_id[1] * chunk
    img = _degrade(sc, level, y0, min(y0 + chunk, shape[0]), x0, min(x0 + chunk, shape[1]), variant)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _label_block(block_id=None, *, sc: _Scene, level: int, shape: tuple[int, int], chunk: int):
    """One dask chunk of a labels level."""
    y0, x0 = block_id[0] * chunk, block_id[1] * chunk
    size = (sc.height, sc.width)
    return render_labels(level, y0, min(y0 + chunk, shape[0]), x0, min(x0 + chunk, shape[1]), size=size, seed=sc.seed)


def _chunks(n: int, chunk: int) -> tuple[int, ...]:
    return (chunk,) * (n // chunk) + ((n % chunk,) if n % chunk else ())


def synthetic_slide(
    size: tuple[int, int] = DEFAULT_SIZE,
    *,
    seed: int = 0,
    chunk: int = 512,
    variant: str = "clean",
    min_size: int = 512,
) -> tuple[Pyramid, Pyramid]:
    """Image pyramid (axes "yxc", uint8 RGB) and ground-truth labels pyramid (axes "yx", uint8, kind="labels")."""
    h, w = _check_size(size)
    _check_variant(variant)
    if chunk < 1:
        raise HiresError(f"chunk must be a positive number of pixels, got {chunk}")
    sc = _Scene(h, w, int(seed))
    images, labels = [], []
    for level, (lh, lw) in enumerate(level_shapes((h, w), min_size)):
        cy, cx = _chunks(lh, chunk), _chunks(lw, chunk)
        images.append(
            da.map_blocks(
                partial(_image_block, sc=sc, level=level, shape=(lh, lw), chunk=chunk, variant=variant),
                chunks=(cy, cx, (3,)),
                dtype=np.uint8,
                meta=np.empty((0, 0, 0), np.uint8),
                name=f"synthetic-slide-{h}x{w}-s{seed}-{variant}-L{level}",
            )
        )
        labels.append(
            da.map_blocks(
                partial(_label_block, sc=sc, level=level, shape=(lh, lw), chunk=chunk),
                chunks=(cy, cx),
                dtype=np.uint8,
                meta=np.empty((0, 0), np.uint8),
                name=f"synthetic-labels-{h}x{w}-s{seed}-L{level}",
            )
        )
    image = Pyramid(
        levels=images,
        axes="yxc",
        scale=(1.0, 1.0, 1.0),
        translation=(0.0, 0.0, 0.0),
        name="synthetic slide",
        channel_names=["R", "G", "B"],
        source=None,
        nominal_pixel_size=PIXEL_SIZE,
    )
    truth = Pyramid(
        levels=labels,
        axes="yx",
        scale=(1.0, 1.0),
        translation=(0.0, 0.0),
        name="ground truth",
        kind="labels",
        class_names=dict(CLASS_NAMES),
        class_colors=dict(CLASS_COLORS),
        source=None,
        nominal_pixel_size=PIXEL_SIZE,
    )
    return image, truth
