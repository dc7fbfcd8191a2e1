"""The engine holds a bounded number of blocks in flight, whatever the image size (DESIGN.md: blocks own their output)."""

from __future__ import annotations

import threading
import time
import weakref

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_hires.engine import predict
from napari_hires.io.pyramid import Pyramid
from napari_hires.models.base import HiresModel

BLOCK = 256  # output block = store chunk = source chunk: each block reads exactly its own source chunk (halo 0)
TILE = 128
PREFETCH = 2
#: Blocks a pipeline may hold at once: one being read, PREFETCH queued, one on the model, two awaiting their write,
#: one being written. A constant: it must not grow with the image.
BOUND = 1 + PREFETCH + 1 + 2 + 1


class SlowPointwise(HiresModel):
    """A 1x1 convolution that sleeps a little per batch, so that a reader left unbounded would run far ahead."""

    task = "segmentation"
    in_channels = 3
    out_channels = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.002)
        return self.conv(x)


class Tracker:
    """Counts blocks whose pixels were read but not yet written, and source chunks still alive in memory."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: set[tuple[int, int]] = set()
        self.written = 0
        self.alive = 0
        self.peak_blocks = 0
        self.peak_alive = 0

    def chunk(self, block_info=None) -> np.ndarray:
        (y0, _), (x0, _) = block_info[None]["array-location"]
        data = np.full((BLOCK, BLOCK), (y0 // BLOCK * 7 + x0 // BLOCK) % 251, dtype=np.uint8)
        with self.lock:
            self.started.add((y0 // BLOCK, x0 // BLOCK))
            self.alive += 1
            self.peak_blocks = max(self.peak_blocks, len(self.started) - self.written)
            self.peak_alive = max(self.peak_alive, self.alive)
        weakref.finalize(data, self._released)
        return data

    def _released(self) -> None:
        with self.lock:
            self.alive -= 1

    def progress(self, done: int, total: int, box) -> None:
        with self.lock:
            self.written += 1


def run(tmp_path, blocks_per_side: int) -> Tracker:
    tracker = Tracker()
    side = blocks_per_side * BLOCK
    level = da.map_blocks(tracker.chunk, dtype=np.uint8, chunks=((BLOCK,) * blocks_per_side,) * 2)
    image = Pyramid([level], "yx", (1.0, 1.0), (0.0, 0.0), name=f"gray{side}")  # gray: repeated to RGB
    out = tmp_path / f"pred{side}.zarr"
    result = predict(image, SlowPointwise(), out, tile=TILE, block=BLOCK, chunk=BLOCK, batch=4, device="cpu",
                     prefetch=PREFETCH, progress=tracker.progress)
    assert result.blocks_done == blocks_per_side**2 == tracker.written
    labels = zarr.open_group(out, mode="r")["0"]
    assert labels.shape == (side, side)
    return tracker


@pytest.fixture
def one_torch_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread is several times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_blocks_in_flight_do_not_grow_with_the_image(tmp_path, one_torch_thread):
    small, large = run(tmp_path, 5), run(tmp_path, 10)  # 25 and 100 blocks
    for tracker in (small, large):
        assert 1 <= tracker.peak_blocks <= BOUND
        assert 1 <= tracker.peak_alive <= BOUND
        assert tracker.alive == 0  # nothing of the input kept after the run
    assert large.peak_blocks <= small.peak_blocks + 1  # 4x the blocks, the same handful in flight
    assert BOUND < 25
