"""Procedural building blocks for the synthetic slide: counter-based hashing, value noise, anti-aliased fbm.

Everything is a pure function of coordinates and integer keys, so any region can be rendered alone and agree
exactly with the same region cut out of a larger render. Coordinates are level-0 pixel centres (float64).
"""

from __future__ import annotations

from functools import partial

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xC2B2AE3D27D4EB4F)
_S30, _S27, _S31, _S11, _S32 = (np.uint64(s) for s in (30, 27, 31, 11, 32))
_TWO53 = 2.0**-53

#: Variance of one octave of value noise (lattice values uniform in [-1, 1], cubic fade), measured numerically.
VALUE_NOISE_VAR = 0.184


def mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-mixed 64-bit hash of a 64-bit word (wrapping arithmetic)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def key(*parts: int) -> int:
    """Fold small integers (seed, field id, octave, ...) into one 64-bit key."""
    h = np.array([0x243F6A8885A308D3], dtype=np.uint64)
    for p in parts:
        h = mix(h ^ (np.array([p & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) * _K1))
    return int(h[0])


def hash2(k: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """64-bit hash of integer lattice points (broadcast) under key ``k``."""
    hy = mix(np.uint64(k) ^ (np.asarray(iy).astype(np.int64).astype(np.uint64) * _K1))
    return mix(hy ^ (np.asarray(ix).astype(np.int64).astype(np.uint64) * _K2))


def unit(h: np.ndarray) -> np.ndarray:
    """Uniform floats in [0, 1) from 64-bit hashes."""
    return (h >> _S11).astype(np.float64) * _TWO53


def _lattice_values(k: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Lattice values in [-1, 1] at integer points (broadcast), float32 like all per-pixel noise."""
    return (unit(hash2(k, iy, ix)) * 2.0 - 1.0).astype(np.float32)


def _corners(k: int, iy: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, ...]:
    """Lattice values at the four cell corners of each point, hashing each lattice point once when they repeat."""
    y_lo, x_lo = int(iy.min()), int(ix.min())
    ny, nx = int(iy.max()) - y_lo + 2, int(ix.max()) - x_lo + 2
    if ny * nx > np.broadcast(iy, ix).size:
        lat = partial(_lattice_values, k)
        return lat(iy, ix), lat(iy, ix + 1), lat(iy + 1, ix), lat(iy + 1, ix + 1)
    grid = _lattice_values(k, np.arange(y_lo, y_lo + ny)[:, None], np.arange(x_lo, x_lo + nx)[None, :])
    ry, rx = iy - y_lo, ix - x_lo
    return grid[ry, rx], grid[ry, rx + 1], grid[ry + 1, rx], grid[ry + 1, rx + 1]


def value_noise(
    y: np.ndarray, x: np.ndarray, lam: float, k: int, grad: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Value noise of lattice spacing ``lam`` px at points (y, x) (broadcastable); optionally its gradient.

    A column of y and a row of x (a pixel grid) take a fast path that interpolates along x on the lattice rows
    first; it performs the same floating-point operations per point, so both paths agree bit for bit.
    """
    off = float(unit(hash2(k, np.array([-7]), np.array([13])))[0]) * 1000.0  # decorrelate lattices of keys
    sy = (y + off) / lam
    sx = (x - off) / lam
    fy0, fx0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - fy0, sx - fx0
    iy, ix = fy0.astype(np.int64), fx0.astype(np.int64)
    fy, fx = fy.astype(np.float32), fx.astype(np.float32)
    wy = fy * fy * (3.0 - 2.0 * fy)
    wx = fx * fx * (3.0 - 2.0 * fx)
    if iy.ndim == 2 and ix.ndim == 2 and iy.shape[1] == 1 and ix.shape[0] == 1:
        rows, inv = np.unique(np.concatenate([iy[:, 0], iy[:, 0] + 1]), return_inverse=True)
        r0, r1 = inv[: iy.shape[0]], inv[iy.shape[0] :]
        g0, g1, _, _ = _corners(k, rows[:, None], ix)
        dd = g1 - g0  # per lattice row and pixel column
        rowval = g0 + dd * wx
        a, b = rowval[r0], rowval[r1]
        d0, d1 = (dd[r0], dd[r1]) if grad else (None, None)
    else:
        g00, g01, g10, g11 = _corners(k, iy, ix)
        d0 = g01 - g00
        d1 = g11 - g10
        a = g00 + d0 * wx
        b = g10 + d1 * wx
    v = a + (b - a) * wy
    if not grad:
        return v, None, None
    dy = (b - a) * (6.0 * fy * (1.0 - fy)) / lam
    dx = (d0 + (d1 - d0) * wy) * (6.0 * fx * (1.0 - fx)) / lam
    return v, dy, dx


def attenuation(footprint: float, lam: float) -> float:
    """Fraction of a value-noise octave (spacing ``lam``) that survives a box filter of width ``footprint``.

    Least-squares factor between the box-filtered noise and the noise sampled at the box centre, fitted
    numerically (exp(-0.28 r^2), r = footprint / lam); once the box spans a few lattice cells the octave is
    replaced by its mean, 0.
    """
    r = footprint / lam
    return float(np.exp(-0.28 * r * r)) if r < 2.5 else 0.0


def fbm(
    y: np.ndarray,
    x: np.ndarray,
    lam0: float,
    lam_min: float,
    footprint: float,
    k: int,
    gain: float = 0.5,
    grad: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    """Fractal value noise, octaves from ``lam0`` down to ``lam_min``, anti-aliased for a pixel ``footprint``.

    Octaves finer than the footprint are replaced by their mean (0) and partly resolved ones attenuated, so
    coarse levels stay cheap and match the box-averaged fine level. Returns value, gradient (or None) and the
    variance of the detail that was averaged away (used to widen thresholds).
    """
    shape = np.broadcast_shapes(np.shape(y), np.shape(x))
    v = np.zeros(shape, np.float32)
    gy = np.zeros(shape, np.float32) if grad else None
    gx = np.zeros(shape, np.float32) if grad else None
    resid = 0.0
    lam, amp, octave = float(lam0), 1.0, 0
    while lam >= lam_min * 0.999:
        att = attenuation(footprint, lam)
        resid += amp * amp * VALUE_NOISE_VAR * (1.0 - att * att)
        if att > 0.0:
            n, ny, nx = value_noise(y, x, lam, key(k, octave), grad)
            w = np.float32(att * amp)
            v += w * n
            if grad:
                gy += w * ny
                gx += w * nx
        lam, amp, octave = lam / 2.0, amp * gain, octave + 1
    return v, gy, gx, resid


def pixel_normal(k: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Standard normal deviates, one per integer pixel (broadcast), from a hash (Box-Muller)."""
    h = hash2(k, iy, ix)
    u1 = ((h >> _S32).astype(np.float64) + 0.5) * 2.0**-32
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) * 2.0**-32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def ellipse_coverage(
    dy: np.ndarray, dx: np.ndarray, ry: np.ndarray, rx: np.ndarray, footprint: float, n: int = 4
) -> np.ndarray:
    """Fraction of a square pixel of side ``footprint`` (centre offset dy, dx from the centre) inside the ellipse.

    Exact in x, ``n``-point midpoint quadrature in y, so discs are anti-aliased for any pixel size.
    """
    u = (dy / ry).astype(np.float32)
    hu = ((0.5 * footprint) / ry).astype(np.float32)
    v = (dx / rx).astype(np.float32)
    hv = ((0.5 * footprint) / rx).astype(np.float32)
    acc = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    for i in range(n):
        ui = u + hu * (-1.0 + (2.0 * i + 1.0) / n)
        s = np.sqrt(np.clip(1.0 - ui * ui, 0.0, None))
        acc += np.clip(np.minimum(v + hv, s) - np.maximum(v - hv, -s), 0.0, None)
    return acc / (np.float32(2 * n) * hv)
