"""The engine on a real dask.distributed LocalCluster: the same store as a local run, tiny tasks, resume."""

from __future__ import annotations

import pickle

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from napari_hires.cli import main
from napari_hires.engine import CancelToken, predict
from napari_hires.engine.distributed import predict_distributed
from napari_hires.errors import HiresError
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.models import create_model, save_model

pytestmark = pytest.mark.slow  # a real two-process cluster

#: 600 x 700 RGB pixels in 256-pixel blocks: 3 x 3 blocks, the last row and column partial.
SETTINGS = dict(tile=256, overlap=32, chunk=128, block=256)
BLOCKS = 9


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    pyr = Pyramid([da.from_array(pixels, chunks=(128, 128, 3))], "yxc", (1.0,) * 3, (0.0,) * 3, name="random")
    return write_ome_zarr(pyr, tmp_path_factory.mktemp("input") / "in.zarr", chunk=128)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("hct_tiny_seg")


@pytest.fixture(scope="module")
def local(image, model, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.zarr"
    return predict(image, model, out, **SETTINGS)


def labels(path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return [group[str(level)][...] for level in (0, 1)]


def assert_same_store(a, b) -> None:
    for mine, theirs in zip(labels(a), labels(b)):
        assert np.array_equal(mine, theirs)
    assert zarr.open_group(str(b), mode="r").attrs["napari_hires"] == {"state": "complete"}


class TaskSizes(SchedulerPlugin):
    """Records the pickled size of every task's run spec as the scheduler hands it to a worker."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "processing":
            self.sizes[str(key)] = len(pickle.dumps(self.scheduler.tasks[key].run_spec))


def test_cluster_gives_the_local_store_with_tasks_of_coordinates(client, image, model, local, tmp_path):
    client.register_plugin(TaskSizes(), name="task-sizes")
    out = tmp_path / "cluster.zarr"
    result = predict_distributed(image, model, out, client=client, **SETTINGS)

    assert_same_store(local.path, out)
    assert (result.blocks_done, result.blocks_skipped, result.cancelled) == (BLOCKS, 0, False)
    assert (result.pixels, result.tiles) == (local.pixels, local.tiles) == (600 * 700, local.tiles)
    sizes = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["task-sizes"].sizes)
    ours = [size for key, size in sizes.items() if "-block-" in key]
    assert len(ours) == BLOCKS
    weights = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert max(ours) < 2000 < weights // 100  # coordinates only: no pixels, no weights, no open files


def test_cancelled_cluster_run_resumes_with_the_model_file(client, image, model, local, tmp_path):
    out = tmp_path / "resumed.zarr"
    cancel = CancelToken()
    first = predict_distributed(image, model, out, client=client, cancel=cancel,
                                progress=lambda done, total, box: cancel.cancel(), **SETTINGS)
    assert first.cancelled and 1 <= first.blocks_done < BLOCKS
    assert zarr.open_group(str(out), mode="r").attrs["napari_hires"]["state"] == "writing"  # not passed off as whole

    weights = save_model(model, tmp_path / "model.safetensors")  # the same weights, now shipped as a file path
    second = predict_distributed(image, weights, out, client=client, **SETTINGS)
    assert (second.blocks_skipped, second.blocks_done) == (first.blocks_done, BLOCKS - first.blocks_done)
    assert first.pixels + second.pixels == 600 * 700
    assert_same_store(local.path, out)


def test_worker_errors_reach_the_caller_and_leave_the_store_unfinished(client, image, model, tmp_path):
    out = tmp_path / "failed.zarr"
    with pytest.raises(HiresError, match="batch"):
        predict_distributed(image, model, out, client=client, batch=0, **SETTINGS)
    with pytest.raises(HiresError, match="precision"):  # checked on the workers, which run the model
        predict_distributed(image, model, out, client=client, precision="fp8", **SETTINGS)
    assert zarr.open_group(str(out), mode="r").attrs["napari_hires"]["state"] == "writing"


def test_in_memory_images_are_refused_with_a_hint(client, model, tmp_path):
    with pytest.raises(HiresError, match="write_ome_zarr"):
        predict_distributed(np.zeros((300, 300), np.uint8), model, tmp_path / "x.zarr", client=client, **SETTINGS)


def test_cli_runs_on_an_existing_scheduler(client, image, model, local, tmp_path, capsys):
    weights = str(save_model(model, tmp_path / "model.safetensors"))
    out = str(tmp_path / "scheduler.zarr")
    argv = ["predict", image, out, "--model", weights, "--scheduler", client.scheduler.address, "--quiet",
            *(f"--{k}={v}" for k, v in SETTINGS.items())]
    assert main(argv) == 0
    assert f"blocks: {BLOCKS} done, 0 skipped of {BLOCKS}" in capsys.readouterr().out
    assert_same_store(local.path, out)


def test_a_cluster_run_takes_the_output_lock_and_its_workers_do_not(client, image, model, local, tmp_path):
    """Refused while another run holds the output, naming it; once free, the client holds the lock and its worker
    processes (which reopen the store) are not refused by it."""
    import os

    from napari_hires.io.output_lock import OutputBusyError, lock_output

    out = tmp_path / "locked.zarr"
    with lock_output(out):
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            predict_distributed(image, model, out, client=client, **SETTINGS)
    result = predict_distributed(image, model, out, client=client, **SETTINGS)
    assert result.blocks_done == BLOCKS and not result.cancelled
    assert_same_store(local.path, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked.zarr"]


def test_trained_weights_by_tag_run_on_the_workers_as_declared_here(client, image, tmp_path):
    """The workers rebuild a tagged model as the client declares it (its card's halo, not its architecture's, decides
    the overlap), so they write what a local run writes."""
    settings = dict(SETTINGS, overlap=None)
    local = predict(image, "hct_tiny_seg.synthetic", tmp_path / "local.zarr", **settings)
    out = tmp_path / "cluster.zarr"
    result = predict_distributed(image, "hct_tiny_seg.synthetic", out, client=client, **settings)
    assert not result.cancelled and result.blocks_done == BLOCKS
    assert_same_store(local.path, out)
