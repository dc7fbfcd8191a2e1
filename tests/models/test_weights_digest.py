"""Weights are checked against the digest their card records; saved model files are readable like any file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from importlib.resources import files

import dask.array as da
import numpy as np
import pytest
import torch

from napari_hires.errors import HiresError
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.models import create_model, load_model, save_model
from napari_hires.models.shipped import SHIPPED

WEIGHTS = files("napari_hires") / "weights"


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _damaged_copy(tmp_path, name: str = "hct_tiny_seg_synthetic", flips: int = 1000):
    """A copy of a shipped model file with ``flips`` bytes of its tensor data inverted (the header left intact)."""
    for suffix in (".safetensors", ".json"):
        shutil.copyfile(WEIGHTS / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
    path = tmp_path / f"{name}.safetensors"
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # safetensors: header length, JSON header, then tensor bytes
    for i in np.random.default_rng(0).choice(np.arange(start, len(data)), flips, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def test_shipped_cards_record_the_digest_of_their_weights():
    for name in SHIPPED:
        card = json.loads((WEIGHTS / f"{name}.json").read_text())
        assert card["weights_sha256"] == _sha256(WEIGHTS / f"{name}.safetensors"), name


def test_flipped_bytes_in_a_model_file_are_refused(tmp_path):
    path = _damaged_copy(tmp_path)
    with pytest.raises(HiresError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "hct_tiny_seg_synthetic.json" in message
    assert "sha256" in message and "copy" in message and "save_model" in message


def test_predict_with_a_damaged_model_file_is_one_line_exit_2(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    image = write_ome_zarr(Pyramid([da.from_array(pixels)], "yxc", (1.0,) * 3, (0.0,) * 3), tmp_path / "in.zarr")
    model, out = _damaged_copy(tmp_path), tmp_path / "out.zarr"
    proc = subprocess.run([sys.executable, "-m", "napari_hires.cli", "predict", str(image), str(out), "--model",
                           str(model), "--quiet"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("napari-hires predict: error: ") and str(model) in lines[0] and "sha256" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_saved_model_files_follow_the_umask_like_any_file(tmp_path, umask, mode):
    torch.manual_seed(0)
    previous = os.umask(umask)
    try:
        weights = save_model(create_model("hct_tiny_seg"), tmp_path / "m")
    finally:
        os.umask(previous)
    assert oct(weights.stat().st_mode & 0o777) == oct(mode)
    assert oct((tmp_path / "m.json").stat().st_mode & 0o777) == oct(mode)
    assert json.loads((tmp_path / "m.json").read_text())["weights_sha256"] == _sha256(weights)
    load_model(weights)  # and it verifies


def test_a_card_without_digest_loads_with_one_warning(tmp_path):
    torch.manual_seed(0)
    model = create_model("hct_tiny_seg")
    save_model(model, tmp_path / "m")
    card = json.loads((tmp_path / "m.json").read_text())
    card.pop("weights_sha256", None)
    (tmp_path / "m.json").write_text(json.dumps(card))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = load_model(tmp_path / "m.safetensors"), load_model(tmp_path / "m.safetensors")
    assert [str(w.message) for w in caught if "cannot be verified" in str(w.message)] == [
        f"{tmp_path / 'm.json'} records no digest of its weights, so {tmp_path / 'm.safetensors'} cannot be verified; "
        "save the model again (napari_hires.models.save_model) to record one"]
    for key, value in model.state_dict().items():  # and it loaded, both times
        assert torch.equal(value, first.state_dict()[key]) and torch.equal(value, second.state_dict()[key])
