"""The same blocks as :func:`~napari_hires.engine.predict`, run as tasks on a dask.distributed cluster.

The client plans the run (creating or reopening the output store) and finishes it (coarser levels, metadata). A
worker plugin carries the job once per worker: the input path, the model (a file path, or its weights) and the
settings; each worker opens the input by path, builds the model and reopens the store the first time it gets a
block. Tasks carry only block coordinates, so a million-block run costs the scheduler a million tiny tasks, and a
block written by a worker is recorded in the store's journal exactly as in a local run: results are identical, and
a rerun on any cluster (or locally) resumes.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Generator

from napari_hires.errors import HiresError, OutputExistsError, missing_extra

try:
    from distributed import Client, WorkerPlugin, as_completed, get_worker
    from distributed.scheduler import KilledWorker
except ImportError as err:
    raise missing_extra("distributed", "dask.distributed", "running on a dask cluster") from err

from napari_hires.engine.events import BlockWritten, block_progress, drain
from napari_hires.engine.options import RunOptions
from napari_hires.engine.predict import (
    PredictionPlan,
    PredictionResult,
    Progress,
    RunCounts,
    RunEvent,
    plan_prediction,
    planned_run,
)
from napari_hires.engine.runner import CancelToken

#: Seconds to wait for a cluster that has no workers yet before giving up.
WORKER_WAIT = 60.0


def predict_distributed(
    image_path: str | os.PathLike,
    model: Any,
    out: str | os.PathLike,
    options: RunOptions | None = None,
    *,
    client: Client,
    level: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: CancelToken | None = None,
    **changes: Any,
) -> PredictionResult:
    """Predict the image at ``image_path`` with ``model`` into ``out`` on the workers of ``client``.

    Arguments mean what they mean for :func:`~napari_hires.engine.predict`; ``device``, ``precision`` and
    ``batch`` apply on each worker (an automatic batch is the worker's device's). Paths must name the same files on
    every worker (a shared file system). Setting ``cancel`` stops handing out blocks; those in flight finish, and
    rerunning the same call resumes.
    """
    steps = run_distributed(image_path, model, out, RunOptions.of(options, **changes), client=client, level=level,
                            region=region, overwrite=overwrite, cancel=cancel)
    return drain(steps, block_progress(progress))


def run_distributed(
    image_path: str | os.PathLike,
    model: Any,
    out: str | os.PathLike,
    options: RunOptions | None = None,
    *,
    client: Client,
    level: int | None = None,
    region: tuple[int, int, int, int] | None = None,
    overwrite: bool = False,
    cancel: CancelToken | None = None,
) -> Generator[RunEvent, None, PredictionResult]:
    """:func:`predict_distributed` as a generator of the events of :func:`~napari_hires.engine.run_prediction`."""
    if not isinstance(image_path, (str, os.PathLike)):
        raise HiresError("a cluster run opens its input by path on every worker: pass a file path (write in-memory "
                         "images to OME-Zarr first with napari_hires.io.ome_zarr_writer.write_ome_zarr)")
    started = time.perf_counter()
    options = options or RunOptions()
    image, out = os.path.abspath(image_path), os.path.abspath(out)
    plan = plan_prediction(image, model, out, options, overwrite=overwrite, level=level, region=region)  # locks out
    where = dict(level=plan.resolution.level, region=plan.region)  # as planned, the level chosen once

    def blocks() -> Generator[BlockWritten, None, RunCounts]:
        if not plan.todo:
            return RunCounts()
        plugin = BlockWorker(image, out, where, options, _model_spec(model, plan))
        return (yield from _schedule(client, plugin, plan, cancel or CancelToken()))

    return (yield from planned_run(plan, out, blocks, started))


def _model_spec(model: Any, plan: PredictionPlan) -> dict[str, Any]:
    """How workers get the client's model: a model file by path, anything else as its weights and declared identity."""
    if isinstance(model, (str, os.PathLike)) and os.path.exists(model):
        return {"file": os.path.abspath(model)}  # what create_model loads as a model file
    net = plan.net
    if net.architecture is None:
        raise HiresError(f"{type(net).__name__} was not built by napari_hires.models.create_model, so workers cannot "
                         "rebuild it; save it with napari_hires.models.save_model and pass the file")
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    declared = {"tag": net.tag, "card": net.card, "trained": net.trained, "halo": net.halo, "tile_size": net.tile_size}
    return {"name": net.architecture, "overrides": dict(net.overrides), "declared": declared, "weights": save(state)}


def _schedule(client: Client, plugin: "BlockWorker", plan: PredictionPlan,
              cancel: CancelToken) -> Generator[BlockWritten, None, RunCounts]:
    """Hand out the plan's blocks (a bounded number in flight), yielding each as it is written; returns what they
    added up to."""
    _wait_for_workers(client)
    name = f"napari-hires-{uuid.uuid4().hex[:12]}"
    client.register_plugin(plugin, name=name)
    total, done = len(plan.todo) + plan.skipped, plan.skipped
    counts = RunCounts()
    window = max(2, 2 * sum(client.nthreads().values()))
    todo = iter(plan.todo)
    boxes: dict[str, Any] = {}
    running = as_completed()

    def submit() -> None:
        item = None if cancel.cancelled else next(todo, None)
        if item is None:
            return
        index, box, want = item
        future = client.submit(_run_block, name, index, tuple(box), tuple(want),
                               key=f"{name}-block-{index[0]}-{index[1]}", pure=False)
        boxes[future.key] = box
        running.add(future)

    try:
        for _ in range(window):
            submit()
        for future in running:
            counts.add(future.result())  # re-raises a worker's error here
            done += 1
            yield BlockWritten(done, total, boxes.pop(future.key))
            submit()
    except KilledWorker as err:
        client.cancel(list(running.futures))
        raise HiresError(f"dask workers kept dying on a block ({err}); give workers more memory or use a smaller "
                         "--tile or --batch, then rerun the same command to resume") from None
    except BaseException:
        client.cancel(list(running.futures))
        raise
    finally:
        client.unregister_worker_plugin(name)
    return counts


def _wait_for_workers(client: Client) -> None:
    if client.nthreads():
        return
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except TimeoutError:
        raise HiresError(f"the dask cluster at {client.scheduler.address} has had no workers for {WORKER_WAIT:.0f} s; "
                         "start some (dask worker ADDRESS) or use --workers N for a local cluster") from None


def _run_block(plugin: str, index: tuple[int, int], box: tuple[int, ...], want: tuple[int, ...]) -> RunCounts:
    """The task: one block on this worker's cached job; returns what it added up to."""
    return get_worker().plugins[plugin].run(index, box, want)


class BlockWorker(WorkerPlugin):
    """One run's job on one worker: the input, model and store, opened on the worker's first block and kept.

    Blocks run one at a time per worker (the model lives on one device), with torch using the worker's threads.
    """

    def __init__(self, image: str, out: str, where: dict[str, Any], options: RunOptions,
                 model: dict[str, Any]) -> None:
        self.image, self.out, self.where, self.options, self.model = image, out, where, options, model
        self.job: Any = None

    def setup(self, worker: Any) -> None:
        self.threads = worker.state.nthreads
        self.lock = threading.Lock()

    def teardown(self, worker: Any) -> None:
        self.job = None

    def run(self, index: tuple[int, int], box: tuple[int, ...], want: tuple[int, ...]) -> RunCounts:
        from napari_hires.engine.tiling import Box

        with self.lock:
            if self.job is None:
                self.job = self._open()
            return self.job.predict_block(tuple(index), Box(*box), Box(*want))

    def _open(self) -> Any:
        """Open input, model and store as the client planned them (the same run record reopens the same store)."""
        import torch

        from napari_hires.engine.predict import BlockJob

        torch.set_num_threads(self.threads)
        try:
            plan = plan_prediction(self.image, self._build_model(), self.out, self.options, overwrite=False,
                                   hold_lock=False, **self.where)
        except OutputExistsError:
            raise HiresError(
                f"a worker could not reopen the output {self.out} that the client created: it sees another input, "
                "model or store there. Run workers where the input, model file and output paths name the same files "
                "as on the client (a shared file system)"
            ) from None
        return BlockJob(plan)

    def _build_model(self) -> Any:
        """The client's model: its file, or its architecture with the client's weights and identity."""
        from napari_hires.models.registry import create_model

        if "file" in self.model:
            return create_model(self.model["file"])
        from safetensors.torch import load

        from napari_hires.models.files import load_weights

        net = create_model(self.model["name"], **self.model["overrides"])
        load_weights(net, load(self.model["weights"]), f"the client's {self.model['name']} weights")
        for key, value in self.model["declared"].items():  # as the client's model is: tagged, carded, its halo
            setattr(net, key, value)
        return net
