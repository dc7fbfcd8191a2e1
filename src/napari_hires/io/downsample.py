"""Downsampling kernels for pyramid levels: the mean for images, the mode for label images.

Only the y and x axes shrink, by ``factor``; output sizes are ``ceil(n / factor)``. A window that runs past an odd
edge uses only the pixels that exist, so the last row/column of a level is the mean (or mode) of what is there.
Both kernels are pure functions of their block, so a block of level k+1 computed from a region of level k equals the
same region of a level computed in one piece, as long as the region starts on a multiple of ``factor``.
"""

from __future__ import annotations

import numpy as np


def _yx_axes(ndim: int, axes: str) -> tuple[int, int]:
    """Positions of y and x in a block described by ``axes`` ("cyx", "yx...", "...yx": "..." is any other axes)."""
    if "..." in axes:
        head, tail = axes.split("...", 1)
        if "..." in tail or len(head) + len(tail) > ndim:
            raise ValueError(f"axes {axes!r} do not describe a {ndim}-d block")
        letters = head + "?" * (ndim - len(head) - len(tail)) + tail
    else:
        letters = axes
    if len(letters) != ndim or letters.count("y") != 1 or letters.count("x") != 1:
        raise ValueError(f"axes {axes!r} do not describe a {ndim}-d block with one y and one x axis")
    return letters.index("y"), letters.index("x")


def _windows(block: np.ndarray, factor: int, axes: str) -> tuple[np.ndarray, np.ndarray]:
    """The block as (..., Y', X', factor*factor) windows, edge-padded, plus a mask of which window pixels exist."""
    if factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor}")
    iy, ix = _yx_axes(block.ndim, axes)
    moved = np.moveaxis(block, (iy, ix), (-2, -1))
    h, w = moved.shape[-2:]
    ph, pw = -h % factor, -w % factor
    pad = [(0, 0)] * (moved.ndim - 2) + [(0, ph), (0, pw)]
    padded = np.pad(moved, pad, mode="edge") if (ph or pw) else moved
    hh, ww = (h + ph) // factor, (w + pw) // factor
    win = padded.reshape(*moved.shape[:-2], hh, factor, ww, factor)
    win = np.moveaxis(win, -3, -2).reshape(*moved.shape[:-2], hh, ww, factor * factor)
    valid = np.zeros((h + ph, w + pw), dtype=bool)
    valid[:h, :w] = True
    valid = np.moveaxis(valid.reshape(hh, factor, ww, factor), -3, -2).reshape(hh, ww, factor * factor)
    return win, valid


def _restore_axes(result: np.ndarray, block: np.ndarray, axes: str) -> np.ndarray:
    iy, ix = _yx_axes(block.ndim, axes)
    return np.ascontiguousarray(np.moveaxis(result, (-2, -1), (iy, ix)))


def downsample_mean(block: np.ndarray, factor: int = 2, axes: str = "yx...") -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` window in y and x; dtype kept, integers rounded half up."""
    block = np.asarray(block)
    win, valid = _windows(block, factor, axes)
    count = valid.sum(axis=-1)
    if np.issubdtype(block.dtype, np.integer):
        acc = np.uint64 if np.issubdtype(block.dtype, np.unsignedinteger) else np.int64
        total = np.where(valid, win, 0).sum(axis=-1, dtype=acc)
        n = count.astype(acc)
        result = ((total + n // 2) // n).astype(block.dtype)
    elif block.dtype == bool:
        result = 2 * np.where(valid, win, False).sum(axis=-1) >= count
    else:
        total = np.where(valid, win, 0).sum(axis=-1, dtype=np.float64)
        result = (total / count).astype(block.dtype)
    return _restore_axes(result, block, axes)


def downsample_mode(block: np.ndarray, factor: int = 2, axes: str = "yx...") -> np.ndarray:
    """Most frequent value of each window in y and x; ties go to the largest value, so objects beat background 0."""
    block = np.asarray(block)
    iy, ix = _yx_axes(block.ndim, axes)
    if factor == 2 and block.shape[iy] % 2 == 0 and block.shape[ix] % 2 == 0:
        return _mode_2x2(block, iy, ix)
    win, valid = _windows(block, factor, axes)
    k = win.shape[-1]
    best = win[..., 0].copy()
    best_count = np.zeros(best.shape, dtype=np.int32)
    for i in range(k):
        candidate = win[..., i]
        count = np.zeros(best.shape, dtype=np.int32)
        for j in range(k):
            count += (win[..., j] == candidate) & valid[..., j]
        count = np.where(valid[..., i], count, -1)
        better = (count > best_count) | ((count == best_count) & (candidate > best))
        best = np.where(better, candidate, best)
        best_count = np.where(better, count, best_count)
    return _restore_axes(best, block, axes)


def _mode_2x2(block: np.ndarray, iy: int, ix: int) -> np.ndarray:
    """:func:`downsample_mode` for 2 x 2 windows of an even-sized block, on the four strided quarter views (the
    pyramid's common case, several times faster than counting over window axes)."""
    moved = np.moveaxis(block, (iy, ix), (-2, -1))
    quarters = [moved[..., i::2, j::2] for i in (0, 1) for j in (0, 1)]
    eq = {(i, j): (quarters[i] == quarters[j]).view(np.uint8) for i in range(4) for j in range(i + 1, 4)}
    counts = [sum(eq[min(i, j), max(i, j)] for j in range(4) if j != i) for i in range(4)]  # others equal to it
    best, best_count = quarters[0].copy(), counts[0]
    for value, count in zip(quarters[1:], counts[1:]):
        better = (count > best_count) | ((count == best_count) & (value > best))
        best = np.where(better, value, best)
        best_count = np.where(better, count, best_count)
    return np.ascontiguousarray(np.moveaxis(best, (-2, -1), (iy, ix)))
