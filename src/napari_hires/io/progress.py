"""Progress of block-wise writing (stores, TIFF tiles, GeoJSON blocks): a bar on stderr, a callback, or nothing."""

from __future__ import annotations

import sys
from typing import Callable

#: True (a tqdm bar on stderr), a callback(done, total) that may raise to cancel, or False (silent).
Progress = bool | Callable[[int, int], None]


def ticker(progress: Progress, total: int, desc: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """A (tick, close) pair reporting blocks done: a tqdm bar on stderr, a callback(done, total), or nothing."""
    if progress is True:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="block", desc=desc, file=sys.stderr)
        return (lambda: bar.update(1)), bar.close
    if callable(progress):
        done = [0]
        progress(0, total)

        def tick() -> None:
            done[0] += 1
            progress(done[0], total)

        return tick, lambda: None
    return (lambda: None), (lambda: None)
