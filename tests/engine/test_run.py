"""One run as a generator of typed events: Planned, then BlockWritten per block in order, then Finishing, then the
result that ``predict`` returns; events come while the pipeline runs; closing it early leaves a store that resumes."""

from __future__ import annotations

import dataclasses

import numpy as np
import zarr

from napari_hires.engine import BlockWritten, Finishing, Planned, RunOptions, predict, run_prediction
from napari_hires.engine.events import drain

OPTIONS = RunOptions(tile=64, chunk=64, block=64, device="cpu")  # 300 x 517 px: 5 x 9 = 45 blocks


def _events(steps):
    """The events a run's generator yields, in order, and what it returns (drained as predict drains it)."""
    events = []
    return events, drain(steps, events.append)


def _same(a, b) -> bool:
    return dataclasses.replace(a, seconds=0.0) == dataclasses.replace(b, seconds=0.0)


def test_the_run_yields_planned_then_each_block_in_order_then_finishing(conv_model, rgb_image, tmp_path):
    events, result = _events(run_prediction(rgb_image, conv_model, tmp_path / "g.zarr", OPTIONS))
    assert isinstance(events[0], Planned) and events[0].plan.spec is not None
    blocks = events[1:-1]
    assert all(isinstance(e, BlockWritten) for e in blocks)
    assert [e.done for e in blocks] == list(range(1, 46)) and {e.total for e in blocks} == {45}
    assert [e.box for e in blocks] == [box for _, box, _ in events[0].plan.todo]
    assert isinstance(events[-1], Finishing)
    assert not result.cancelled and result.blocks_done == 45


def test_the_generators_result_is_what_predict_returns(conv_model, rgb_image, tmp_path):
    _, from_steps = _events(run_prediction(rgb_image, conv_model, tmp_path / "g.zarr", OPTIONS))
    direct = predict(rgb_image, conv_model, tmp_path / "p.zarr", tile=64, chunk=64, block=64, device="cpu")
    assert _same(dataclasses.replace(from_steps, path=direct.path), direct)
    for level in ("0", "1"):
        np.testing.assert_array_equal(zarr.open_group(tmp_path / "g.zarr", mode="r")[level][:],
                                      zarr.open_group(tmp_path / "p.zarr", mode="r")[level][:])


def test_block_events_arrive_while_later_blocks_are_still_to_run(conv_model, rgb_image, tmp_path):
    calls = []
    hook = conv_model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        steps = run_prediction(rgb_image, conv_model, tmp_path / "g.zarr", OPTIONS)
        first = next(e for e in steps if isinstance(e, BlockWritten))
        calls_at_first = len(calls)
        steps.close()
    finally:
        hook.remove()
    assert first.done == 1
    assert calls_at_first < 10  # each block is one batch of tiles here: 45 calls in all


def test_closing_the_generator_early_leaves_a_store_that_resumes(conv_model, rgb_image, tmp_path):
    out = tmp_path / "c.zarr"
    steps = run_prediction(rgb_image, conv_model, out, OPTIONS)
    written = 0
    for event in steps:
        if isinstance(event, BlockWritten):
            written = event.done
            if written == 3:
                break
    steps.close()
    second = predict(rgb_image, conv_model, out, OPTIONS)  # the lock was released: the same job resumes
    assert 3 <= second.blocks_skipped < 45 and second.blocks_done + second.blocks_skipped == 45
    whole = predict(rgb_image, conv_model, tmp_path / "u.zarr", OPTIONS)
    np.testing.assert_array_equal(zarr.open_group(out, mode="r")["0"][:],
                                  zarr.open_group(whole.path, mode="r")["0"][:])
