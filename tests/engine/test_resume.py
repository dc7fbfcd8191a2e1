"""A prediction killed with SIGKILL at an arbitrary moment resumes to exactly the uninterrupted result."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from napari_hires.engine import predict
from napari_hires.engine.output import JOURNAL
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import create_model, save_model

SETTINGS = dict(tile=256, overlap=32, chunk=128, block=128, device="cpu", batch=2)

RUN = """
import sys
from napari_hires.engine import predict
predict(sys.argv[1], sys.argv[2], sys.argv[3], **{settings})
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """An input store (part of the synthetic slide) and a saved model, both on disk."""
    root = tmp_path_factory.mktemp("resume")
    image, _ = synthetic_slide((1024, 1280))
    source = write_ome_zarr(image.with_levels(image.levels[:1]), root / "in.zarr", chunk=256, derive_levels=True)
    torch.manual_seed(3)
    model = save_model(create_model("hct_tiny_seg"), root / "model.safetensors")
    return root, source, str(model)


def _journal(path) -> int:
    try:
        return int(zarr.open_group(path, mode="r")[JOURNAL][...].sum())
    except (KeyError, FileNotFoundError, ValueError):
        return 0


def test_sigkill_then_rerun_equals_an_uninterrupted_run(job):
    root, source, model = job
    killed = root / "killed.zarr"
    script = RUN.format(settings=repr(SETTINGS))
    proc = subprocess.Popen([sys.executable, "-c", script, source, model, str(killed)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _journal(killed) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _journal(killed)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 4 <= done_before < 80  # killed partway: 8 x 10 blocks in all

    resumed = predict(source, model, killed, **SETTINGS)
    assert resumed.blocks_skipped == done_before
    assert resumed.blocks_done + resumed.blocks_skipped == resumed.blocks_total == 80

    whole = predict(source, model, root / "whole.zarr", **SETTINGS)
    a, b = zarr.open_group(killed, mode="r"), zarr.open_group(root / "whole.zarr", mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for level in b.array_keys():
        np.testing.assert_array_equal(a[level][:], b[level][:])
    assert whole.blocks_done == 80
