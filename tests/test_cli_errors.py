"""Failures late in a command are one line: a full disk or read-only output (real tmpfs mounts), overlap >= tile,
and a cluster run without dask.distributed installed."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import tifffile

from napari_hires import cli
from napari_hires.errors import HiresError
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.readers import open_image
from napari_hires.io.synthetic import synthetic_slide


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A 256 x 256 synthetic slide with its labels, a 2048 x 2048 one, and a 1024 x 1024 RGB TIFF of noise (3 MiB,
    incompressible)."""
    root = tmp_path_factory.mktemp("inputs")
    image, labels = synthetic_slide((256, 256), chunk=128)
    slide = write_ome_zarr(image, root / "slide.zarr", labels={"truth": labels}, chunk=128, progress=False)
    large = write_ome_zarr(synthetic_slide((2048, 2048))[0], root / "large.zarr", progress=False)
    noise = root / "noise.tif"
    tifffile.imwrite(noise, np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    return {"slide": Path(slide), "labels": Path(slide) / "labels" / "truth", "large": Path(large), "noise": noise}


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``path`` (``size=...``, ``ro``), unmounted afterwards; skips where mounting is not
    permitted (mount needs root or CAP_SYS_ADMIN)."""
    path.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                              text=True, timeout=30)
    except FileNotFoundError:
        pytest.skip("no mount command: the full-disk and read-only tests mount a small tmpfs")
    if proc.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip()}): the full-disk and read-only "
                    "tests need root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, timeout=30)


def napari_hires(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_hires.cli", *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _command(cmd: str, inputs: dict[str, Path], out: Path) -> list[str]:
    return {
        "synth": ["synth", str(out), "--size", "1024", "1024", "--chunk", "256", "--quiet"],
        "pyramid": ["pyramid", str(inputs["noise"]), str(out), "--quiet"],
        "predict": ["predict", str(inputs["large"]), str(out), "--model", "hct_tiny_seg_synthetic", "--probabilities",
                    "--quiet"],  # large enough to leave zarr writes in flight (asyncio's noise at exit)
        "export": ["export", str(inputs["labels"]), str(out), "--quiet"],
        "train": ["train", str(inputs["slide"]), str(inputs["labels"]), "--model", "hct_tiny_seg", "--out", str(out),
                  "--steps", "1", "--batch", "1", "--tile", "128", "--quiet"],
    }[cmd]


def _output(cmd: str, disk: Path) -> Path:
    return disk / {"export": "labels.tif", "train": "model.safetensors"}.get(cmd, "out.zarr")


def _assert_nothing_passes_for_complete(cmd: str, out: Path) -> None:
    if cmd == "train":  # no model file, and no partial one
        assert not any(out.parent.iterdir()), list(out.parent.iterdir())
    elif cmd == "export":
        assert not out.exists()
    elif out.exists():  # what is left is marked unfinished: readers refuse it
        with pytest.raises(HiresError):
            open_image(out)


# a tmpfs per command, each smaller than what the command writes
FULL = {"synth": "size=1m", "pyramid": "size=1m", "predict": "size=1m", "train": "size=64k"}


@pytest.mark.parametrize("cmd", list(FULL))
def test_a_full_disk_is_one_line_and_leaves_nothing_that_looks_complete(inputs, tmp_path, cmd):
    with tmpfs(tmp_path / "disk", FULL[cmd]) as disk:
        out = _output(cmd, disk)
        proc = napari_hires(*_command(cmd, inputs, out))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"napari-hires {cmd}: error: cannot write {out}: no space left on device")
        assert "free space or choose another output" in lines[0]
        _assert_nothing_passes_for_complete(cmd, out)


@pytest.mark.parametrize("cmd", ["synth", "pyramid", "predict", "export", "train"])
def test_a_read_only_output_is_one_line(inputs, tmp_path, cmd):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        out = _output(cmd, disk)
        proc = napari_hires(*_command(cmd, inputs, out))
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"napari-hires {cmd}: error: ") and str(out) in lines[0]
        assert "read-only file system" in lines[0] and "choose another output" in lines[0]
        assert not out.exists()


def test_write_errors_are_found_through_chains_and_exception_groups():
    def nested(err: OSError) -> Exception:
        try:
            try:
                raise ExceptionGroup("chunk writes", [ValueError("other"), err])
            except ExceptionGroup as group:
                raise RuntimeError("store failed") from group
        except RuntimeError as outer:
            return outer

    full = nested(OSError(errno.ENOSPC, "No space left on device"))
    assert cli.write_error(full, "/data/out.zarr") == ("cannot write /data/out.zarr: no space left on device; free "
                                                       "space or choose another output")
    quota = nested(OSError(errno.EDQUOT, "Disk quota exceeded", "/data/out.zarr/0/c/1/2"))
    assert cli.write_error(quota, "/data/out.zarr") == ("cannot write /data/out.zarr: disk quota exceeded "
                                                        "(/data/out.zarr/0/c/1/2); free space or choose another output")
    denied = OSError(errno.EACCES, "Permission denied", "/data/out.zarr")
    assert cli.write_error(denied, "/data/out.zarr").startswith("cannot write /data/out.zarr: permission denied")
    unreadable = OSError(errno.EACCES, "Permission denied", __file__)  # an existing file outside the output
    assert cli.write_error(unreadable, "/data/out.zarr") == f"cannot access {__file__}: permission denied; check its " \
                                                             "permissions"
    assert cli.write_error(ValueError("no"), "/data/out.zarr") is None
    assert cli.write_error(OSError(errno.EIO, "I/O error"), "/data/out.zarr") is None


def test_overlap_not_smaller_than_the_tile_is_refused_before_any_work(inputs, tmp_path, capsys):
    from napari_hires.engine.predict import predict
    from napari_hires.engine.tiling import layout_for
    from napari_hires.models import create_model

    with pytest.raises(HiresError, match=r"overlap 256 px must be smaller than the tile \(256 px\)"):
        layout_for(create_model("hct_tiny_seg"), tile=256, overlap=256)
    out = tmp_path / "o.zarr"
    with pytest.raises(HiresError, match="overlap 300 px"):
        predict(str(inputs["slide"]), "hct_tiny_seg", out, tile=256, overlap=300)
    assert cli.main(["predict", str(inputs["slide"]), str(out), "--model", "hct_tiny_seg", "--tile", "256",
                     "--overlap", "256", "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "overlap 256 px must be smaller than the tile (256 px)" in lines[0]
    assert not out.exists()


@pytest.fixture
def without_distributed(tmp_path) -> dict[str, str]:
    """PYTHONPATH with a ``distributed`` package first that fails to import, as a missing one does."""
    fake = tmp_path / "site" / "distributed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'distributed'\", "
                                      "name='distributed')\n")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(fake.parent), os.environ.get("PYTHONPATH")) if p)}


@pytest.mark.parametrize("where", [["--workers", "2"], ["--scheduler", "tcp://127.0.0.1:8786"]])
def test_cluster_runs_without_distributed_say_what_to_install(inputs, tmp_path, without_distributed, where):
    out = tmp_path / "o.zarr"
    proc = napari_hires("predict", str(inputs["slide"]), str(out), "--model", "hct_tiny_seg", *where, "--quiet",
                        **without_distributed)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("napari-hires predict: error: ") and "pip install 'napari-hires[distributed]'" in lines[0]
    assert not out.exists()


def test_the_cluster_api_without_distributed_says_what_to_install(without_distributed):
    code = ("from napari_hires.errors import HiresError\n"
            "try:\n    from napari_hires.engine.distributed import predict_distributed\n"
            "except ImportError as err:\n    print(isinstance(err, HiresError), err)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **without_distributed})
    assert proc.stdout.startswith("True ") and "pip install 'napari-hires[distributed]'" in proc.stdout, proc.stderr
