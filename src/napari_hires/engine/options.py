"""How a run goes: one frozen set of options for planning, predicting, the cluster path, the estimate, the widget and
the CLI, where ``None`` means "the model's own value" (tile, overlap) or "decided automatically" (block, batch).

:meth:`RunOptions.resolved` is the one place those automatic values are decided for a model and a device; the
automatic batch by device lives here alone (:func:`auto_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from napari_hires.engine.tiling import TileLayout, layout_for, output_grid
from napari_hires.errors import HiresError

#: Tiles per model call when the batch is left automatic: small on a CPU (no gain from more, more memory), larger on
#: an accelerator (which out-of-memory halving brings down where it must).
AUTO_BATCH = {"cpu": 2}
ACCELERATOR_BATCH = 8
#: The live preview's batches: one tile on a CPU, so that work for a view the user has left stops sooner.
PREVIEW_BATCH = {"cpu": 1}
PREVIEW_ACCELERATOR_BATCH = 4


def auto_batch(device: str = "auto", *, preview: bool = False) -> int:
    """Tiles per batch on ``device`` ("auto", "cpu", "cuda", ...) when the user leaves the batch automatic, for a
    run or (``preview``) for the live preview."""
    from napari_hires.engine.device import resolve_device

    kind = resolve_device(device).type
    if preview:
        return PREVIEW_BATCH.get(kind, PREVIEW_ACCELERATOR_BATCH)
    return AUTO_BATCH.get(kind, ACCELERATOR_BATCH)


@dataclass(frozen=True)
class Resolved:
    """Every automatic value of a run decided: the tile layout, output chunk and block, and the batch on a device."""

    layout: TileLayout
    chunk: int
    block: int
    factor: int  # input pixels per output pixel (1, or the tile stride of a classification heatmap)
    batch: int
    device: str  # the device type the batch was chosen for


@dataclass(frozen=True)
class RunOptions:
    """How to run a model over an image; ``None``: the model's tile and overlap, a block of about four tiles, the
    device's batch. ``live_pyramid`` refreshes the coarser levels under each block as it is written."""

    tile: int | None = None
    overlap: int | None = None
    batch: int | None = None
    block: int | None = None
    chunk: int = 512
    device: str = "auto"
    precision: str = "auto"
    probabilities: bool = False
    prefetch: int = 2
    live_pyramid: bool = False

    def __post_init__(self) -> None:
        for name in ("tile", "batch", "block", "chunk", "prefetch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise HiresError(f"{name} must be at least 1, got {value}")
        if self.overlap is not None and self.overlap < 0:
            raise HiresError(f"overlap must be 0 or more, got {self.overlap}")

    @classmethod
    def of(cls, options: RunOptions | None = None, /, **changes: Any) -> RunOptions:
        """``options`` (default: all automatic) with ``changes`` (keyword arguments of the public functions) applied:
        the one place keywords become options."""
        unknown = sorted(set(changes) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown run option(s) {', '.join(unknown)}; the options are {', '.join(cls.names())}")
        return replace(options or cls(), **changes)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, as keyword arguments and CLI flags (``--name``) spell them."""
        return tuple(f.name for f in fields(cls))

    def layout(self, net: Any) -> TileLayout:
        """The tile layout for ``net``: its own tile and halo unless these options set them."""
        return layout_for(net, self.tile, self.overlap)

    def grid(self, net: Any) -> tuple[TileLayout, int, int, int]:
        """(layout, output chunk, output block, input pixels per output pixel) of ``net`` under these options."""
        layout = self.layout(net)
        return (layout, *output_grid(layout, net.task, self.chunk, self.block))

    def batch_for(self) -> int:
        """The batch set, or the automatic one for :attr:`device`."""
        return self.batch if self.batch is not None else auto_batch(self.device)

    def resolved(self, net: Any) -> Resolved:
        """Every ``None`` decided for ``net`` on this machine's :attr:`device` (what a run here would use)."""
        from napari_hires.engine.device import resolve_device

        layout, chunk, block, factor = self.grid(net)
        return Resolved(layout, chunk, block, factor, self.batch_for(), resolve_device(self.device).type)
