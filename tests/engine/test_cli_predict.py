"""``napari-hires predict`` end to end: real stores on disk, real models, a real LocalCluster for --workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_hires import cli
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.models import create_model, save_model

#: 600 x 700 RGB pixels in 128-pixel blocks: 5 x 6 blocks.
FAST = ["--tile", "256", "--overlap", "32", "--chunk", "128", "--block", "128", "--quiet"]
BLOCKS = 30


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    pixels = np.random.default_rng(1).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    pyr = Pyramid([da.from_array(pixels, chunks=(128, 128, 3))], "yxc", (1.0,) * 3, (0.0,) * 3, name="random")
    return write_ome_zarr(pyr, tmp_path_factory.mktemp("input") / "in.zarr", chunk=128)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """A saved model, so that separate runs (and cluster workers) use the same weights."""
    torch.manual_seed(0)
    return str(save_model(create_model("hct_tiny_seg"), tmp_path_factory.mktemp("model") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def local_store(image, model_file, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("local") / "local.zarr")
    assert cli.main(["predict", image, out, "--model", model_file, *FAST]) == 0
    return out


def labels(path: str) -> list[np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return [group[str(level)][...] for level in (0, 1)]


def test_predict_writes_a_complete_store_and_prints_a_summary(image, tmp_path, capsys):
    out = str(tmp_path / "out.zarr")
    assert cli.main(["predict", image, out, "--model", "hct_tiny_seg", *FAST]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "420,000 pixels" in summary and "megapixels/s" in summary and "k = " in summary
    assert f"blocks: {BLOCKS} done, 0 skipped of {BLOCKS}" in summary and summary.endswith(out)
    group = zarr.open_group(out, mode="r")
    assert group.attrs["napari_hires"] == {"state": "complete"}
    level0 = group["0"][...]
    assert level0.shape == (600, 700) and level0.max() < create_model("hct_tiny_seg").out_channels


def test_region_limits_the_work(image, model_file, local_store, tmp_path, capsys):
    out = str(tmp_path / "region.zarr")
    assert cli.main(["predict", image, out, "--model", model_file, "--region", "0", "256", "0", "256", *FAST]) == 0
    summary = capsys.readouterr().out
    assert "65,536 pixels" in summary and "blocks: 4 done, 0 skipped of 4" in summary
    journal = zarr.open_group(out, mode="r")["napari_hires_journal/blocks"][...]
    assert journal.sum() == 4 and journal[:2, :2].all()
    level0 = zarr.open_group(out, mode="r")["0"][...]
    whole = zarr.open_group(local_store, mode="r")["0"][:256, :256]
    assert whole.any() and np.array_equal(level0[:256, :256], whole)
    assert not level0[256:].any() and not level0[:, 256:].any()


def test_unknown_model_is_one_line_naming_close_names(image, tmp_path, capsys):
    out = tmp_path / "bad.zarr"
    assert cli.main(["predict", image, str(out), "--model", "hct_tiny_sg", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hct_tiny_sg" in err and "hct_tiny_seg" in err
    assert not out.exists()


def test_existing_output_needs_overwrite(image, model_file, local_store, capsys):
    """Another model's run (here the trained weights, not the fixture's untrained ones) is refused on this store."""
    before = labels(local_store)
    assert cli.main(["predict", image, local_store, "--model", "hct_tiny_seg_synthetic", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and local_store in err and "--overwrite" in err
    assert all(np.array_equal(a, b) for a, b in zip(before, labels(local_store)))


@pytest.mark.parametrize("args, words", [
    (["--region", "0", "900", "0", "100"], "not inside the image"),
    (["--level", "3"], "level 3 does not exist"),
    (["--block", "200"], "multiple of the chunk"),
])
def test_bad_settings_are_one_line_errors(image, model_file, tmp_path, capsys, args, words):
    assert cli.main(["predict", image, str(tmp_path / "o.zarr"), "--model", model_file, *FAST, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_missing_input_is_one_line_error(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path / "nothing.zarr"), str(tmp_path / "o.zarr"), "--model", "hct_tiny_seg",
                    *FAST]) == 2
    assert "nothing.zarr" in capsys.readouterr().err


def _any_block_done(journal: str) -> bool:
    try:
        return bool(zarr.open_array(journal, mode="r")[...].any())
    except (OSError, ValueError, KeyError):  # not created yet, or caught mid-write
        return False


def interrupt_after_first_block(argv: list[str], out: str) -> subprocess.CompletedProcess:
    """Run the command in a new process group and press Ctrl-C (SIGINT to the whole group, as a terminal does)
    once the first block is in the journal."""
    code = "import sys; from napari_hires.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    journal = os.path.join(out, "napari_hires_journal", "blocks")
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _any_block_done(journal):
                os.killpg(proc.pid, signal.SIGINT)
                break
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("where", [[], pytest.param(["--workers", "2"], marks=pytest.mark.slow)],
                         ids=["local", "workers"])
def test_ctrl_c_finishes_blocks_in_flight_and_the_same_command_resumes(image, model_file, local_store, tmp_path,
                                                                        capsys, where):
    out = str(tmp_path / "interrupted.zarr")
    argv = ["predict", image, out, "--model", model_file, *FAST]
    done = interrupt_after_first_block([*argv, *where], out)
    assert done.returncode == 130, done.stderr
    assert "run the same command again to resume" in done.stderr
    assert zarr.open_group(out, mode="r").attrs["napari_hires"]["state"] == "writing"

    assert cli.main(argv) == 0  # resumed here: the blocks written before Ctrl-C (by workers or not) are kept
    summary = capsys.readouterr().out
    skipped = int(summary.split(" skipped")[0].rsplit(" ", 1)[-1])
    assert 0 < skipped < BLOCKS and f"{BLOCKS - skipped} done, {skipped} skipped of {BLOCKS}" in summary
    for mine, theirs in zip(labels(out), labels(local_store)):
        assert np.array_equal(mine, theirs)


def test_an_untrained_registered_model_warns_and_resumes_after_ctrl_c(image, tmp_path, capsys):
    """An untrained architecture builds the same weights in every process, so a rerun resumes its own store, and
    every run says in one line that its output is random."""
    out = str(tmp_path / "untrained.zarr")
    argv = ["predict", image, out, "--model", "hct_tiny_seg", *FAST]
    warning = "napari-hires predict: warning: hct_tiny_seg has no trained weights"
    done = interrupt_after_first_block(argv, out)
    assert done.returncode == 130, done.stderr
    assert warning in done.stderr

    assert cli.main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    skipped = int(captured.out.split(" skipped")[0].rsplit(" ", 1)[-1])
    assert 0 < skipped < BLOCKS and f"{BLOCKS - skipped} done, {skipped} skipped of {BLOCKS}" in captured.out
    lines = [line for line in captured.err.splitlines() if "no trained weights" in line]
    assert len(lines) == 1 and lines[0].startswith(warning) and "random" in lines[0]


def test_cluster_runs_report_bad_names_and_paths_as_one_line(image, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    assert cli.main(["predict", image, str(out), "--model", "hct_tiny_sg", "--workers", "2"]) == 2
    assert "hct_tiny_seg" in capsys.readouterr().err
    assert cli.main(["predict", image, str(out), "--model", str(tmp_path / "gone.safetensors"), "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gone.safetensors" in err
    assert not out.exists()


def test_without_tile_the_cli_uses_the_models_own_tile(image, tmp_path, capsys):
    """`napari-hires predict` without --tile tiles as the API does: by the model card's tile, not a fixed 512."""
    from napari_hires.io.build_state import RUN_RECORD
    from napari_hires.models.files import card_for

    torch.manual_seed(0)
    model = create_model("hct_tiny_seg")
    path = save_model(model, tmp_path / "tile384.safetensors", card_for(model, tile_size=384))
    out = str(tmp_path / "own-tile.zarr")
    assert cli.main(["predict", image, out, "--model", str(path), "--chunk", "128", "--block", "128", "--quiet"]) == 0
    record = zarr.open_group(out, mode="r").attrs[RUN_RECORD]
    assert record["tile"] == 384  # a multiple of the model's input multiple (128), so kept as it is
