"""What a run reports as it goes: small typed events that a run's generator yields, and one way to drain it.

A prediction yields :class:`Planned` once its output store exists, :class:`BlockWritten` per block written (in
order, ``done`` counting up) and :class:`Finishing` before the coarser levels and metadata, then returns its
result; training yields a :class:`~napari_hires.training.loop.StepInfo` per step. The API drains these generators,
a widget hands the same generator to napari's worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, TypeVar

from napari_hires.engine.tiling import Box

Result = TypeVar("Result")


@dataclass(frozen=True)
class Planned:
    """The run is planned and its output store exists (a :class:`~napari_hires.engine.predict.PredictionPlan`)."""

    plan: Any


@dataclass(frozen=True)
class BlockWritten:
    """Block ``box`` (output level-0 pixels) is written and journalled: ``done`` of ``total`` blocks now are."""

    done: int
    total: int
    box: Box


@dataclass(frozen=True)
class Finishing:
    """Every block is written; the coarser levels and metadata are being written."""


def block_progress(progress: Callable[[int, int, Box], None] | None) -> Callable[[Any], None] | None:
    """An event handler that calls ``progress(done, total, box)`` for each written block (None for None)."""
    if progress is None:
        return None

    def on_event(event: Any) -> None:
        if isinstance(event, BlockWritten):
            progress(event.done, event.total, event.box)

    return on_event


def drain(steps: Generator[Any, None, Result], on_event: Callable[[Any], None] | None = None) -> Result:
    """Run ``steps`` to its end, handing each event to ``on_event``; returns the generator's result. Whatever
    ends the loop (an error in ``on_event`` too), the generator is closed, so that it releases what it holds."""
    try:
        while True:
            event = next(steps)
            if on_event is not None:
                on_event(event)
    except StopIteration as stop:
        return stop.value
    finally:
        steps.close()
