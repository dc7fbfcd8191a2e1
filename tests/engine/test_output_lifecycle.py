"""The prediction store's lifecycle: predict never writes over its input, resumes only the same job on the same
input content, has one writer per output at a time, and says what differs (or that the job is done) on a rerun."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
import zarr

from napari_hires import cli
from napari_hires.engine import CancelToken, predict
from napari_hires.errors import HiresError
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import create_model, save_model

#: 600 x 700 RGB pixels in 128-pixel blocks: 5 x 6 blocks.
FAST = ["--tile", "256", "--overlap", "32", "--chunk", "128", "--block", "128", "--quiet"]
API = dict(tile=256, overlap=32, chunk=128, block=128, device="cpu")
CLI = "import sys; from napari_hires.cli import main; sys.exit(main(sys.argv[1:]))"


def random_store(path: Path, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    pyr = Pyramid([da.from_array(pixels, chunks=(128, 128, 3))], "yxc", (1.0,) * 3, (0.0,) * 3, name="random")
    return write_ome_zarr(pyr, path, chunk=128, overwrite=True)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return str(save_model(create_model("hct_tiny_seg"), tmp_path_factory.mktemp("model") / "tiny.safetensors"))


@pytest.fixture
def image(tmp_path) -> str:
    return random_store(tmp_path / "in.zarr", seed=1)


def contents(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> digest of its bytes)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def levels(path) -> list[np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return [group[str(level)][...] for level in (0, 1)]


def cancelled_run(image, model, out, after: int = 3, **kwargs):
    """A run cancelled once ``after`` blocks are written (the blocks in flight finish)."""
    cancel = CancelToken()
    result = predict(image, model, out, cancel=cancel, progress=lambda done, *_: done >= after and cancel.cancel(),
                     **{**API, **kwargs})
    assert result.cancelled and 0 < result.blocks_done < result.blocks_total
    return result


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# ------------------------------------------------------------------------------ 1. never over its input


@pytest.mark.parametrize("where", ["the input", "a symlink to the input", "inside the input", "around the input"])
def test_predict_never_writes_over_its_input_even_with_overwrite(tmp_path, model_file, capsys, where):
    image, labels = synthetic_slide((512, 640), chunk=128)
    data = tmp_path / "data"
    source = Path(write_ome_zarr(image, data / "v.zarr", labels={"truth": labels}, chunk=128))
    before = contents(data)
    (tmp_path / "link.zarr").symlink_to(source)
    out = {"the input": source, "a symlink to the input": tmp_path / "link.zarr",
           "inside the input": source / "pred.zarr", "around the input": data}[where]
    assert cli.main(["predict", str(source), str(out), "--model", model_file, *FAST, "--overwrite"]) == 2
    err = one_line_error(capsys)
    assert "input" in err and str(out) in err
    assert contents(data) == before


def test_overwrite_never_removes_a_store_napari_hires_did_not_write(tmp_path, image, model_file, capsys):
    foreign = tmp_path / "theirs.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("0", shape=(64, 64), dtype="uint8")[...] = 7
    before = contents(foreign)
    assert cli.main(["predict", image, str(foreign), "--model", model_file, *FAST, "--overwrite"]) == 2
    assert "did not write" in one_line_error(capsys)
    assert cli.main(["synth", str(foreign), "--size", "256", "256", "--overwrite", "--quiet"]) == 2
    assert "did not write" in one_line_error(capsys)
    assert contents(foreign) == before


def test_a_read_only_output_folder_is_one_line_before_any_work(read_only_dir, image, model_file, capsys):
    out = read_only_dir / "out.zarr"
    assert cli.main(["predict", image, str(out), "--model", model_file, *FAST]) == 2
    err = one_line_error(capsys)
    assert "cannot write" in err and str(read_only_dir) in err
    assert cli.main(["synth", str(read_only_dir / "s.zarr"), "--size", "256", "256", "--quiet"]) == 2
    assert "cannot write" in one_line_error(capsys)


# ------------------------------------------------------------------------------ 2. the same input content


def test_resume_refuses_an_input_rewritten_with_other_pixels_and_resumes_the_same(tmp_path, image, model_file,
                                                                                    capsys):
    cancelled_run(image, model_file, tmp_path / "changed.zarr")
    first = cancelled_run(image, model_file, tmp_path / "same.zarr")
    resumed = predict(image, model_file, tmp_path / "same.zarr", **API)
    assert resumed.blocks_skipped == first.blocks_done and not resumed.cancelled
    predict(image, model_file, tmp_path / "whole.zarr", **API)
    for a, b in zip(levels(tmp_path / "same.zarr"), levels(tmp_path / "whole.zarr")):
        np.testing.assert_array_equal(a, b)

    random_store(Path(image), seed=2)  # same shape and dtype, other pixels
    with pytest.raises(HiresError, match="the input changed since this store was begun: chunk files of .* differ"):
        predict(image, model_file, tmp_path / "changed.zarr", **API)
    assert cli.main(["predict", image, str(tmp_path / "changed.zarr"), "--model", model_file, *FAST]) == 2
    err = one_line_error(capsys)
    assert "the input changed" in err and "newest modified" in err and "--overwrite" in err
    again = predict(image, model_file, tmp_path / "changed.zarr", overwrite=True, **API)
    assert again.blocks_skipped == 0 and again.blocks_done == again.blocks_total


def test_in_memory_inputs_resume_only_with_the_same_pixels(tmp_path, model_file):
    pixels = np.random.default_rng(5).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    first = cancelled_run(pixels, model_file, tmp_path / "a.zarr")
    other = pixels.copy()
    other[300, 350] ^= 1  # one value of one pixel
    with pytest.raises(HiresError, match="the input changed since this store was begun: .*pixels"):
        predict(other, model_file, tmp_path / "a.zarr", **API)
    resumed = predict(pixels, model_file, tmp_path / "a.zarr", **API)
    assert resumed.blocks_skipped == first.blocks_done

    slide = lambda seed: synthetic_slide((600, 700), seed=seed, chunk=128)[0].levels[0]  # noqa: E731
    cancelled_run(slide(0), model_file, tmp_path / "b.zarr")
    with pytest.raises(HiresError, match="the input changed since this store was begun"):
        predict(slide(1), model_file, tmp_path / "b.zarr", **API)
    assert predict(slide(0), model_file, tmp_path / "b.zarr", **API).blocks_skipped > 0


# ------------------------------------------------------------------------------ 3. one writer per output


class HeldRun:
    """A predict() in a thread of this process, held after its first written block until released."""

    def __init__(self, image, model, out) -> None:
        self.started, self.gate, self.result, self.error = threading.Event(), threading.Event(), None, None

        def progress(*_: object) -> None:
            self.started.set()
            assert self.gate.wait(120)

        def run() -> None:
            try:
                self.result = predict(image, model, out, progress=progress, **API)
            except BaseException as err:  # noqa: BLE001 - reported by the test
                self.error = err

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.started.wait(120), self.error

    def finish(self):
        self.gate.set()
        self.thread.join(120)
        assert self.error is None, self.error
        return self.result


def test_a_second_run_on_an_output_being_written_is_refused_naming_the_holder(tmp_path, image, model_file):
    out = tmp_path / "o.zarr"
    held = HeldRun(image, model_file, out)
    try:
        for extra in ([], ["--overwrite"], ["--overwrite", "--model", "hct_tiny_seg"]):  # the same job, and others
            args = ["predict", image, str(out), "--model", model_file, *FAST, *extra]
            if "hct_tiny_seg" in extra:
                args.remove(model_file)
                args.remove("--model")
            second = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr
            err = second.stderr.strip()
            assert len(err.splitlines()) == 1, err
            assert f"pid {os.getpid()}" in err and socket.gethostname() in err and "since" in err
        with pytest.raises(HiresError, match=f"pid {os.getpid()}"):
            predict(image, model_file, out, **API)
    finally:
        result = held.finish()
    assert not result.cancelled and result.blocks_done == result.blocks_total
    assert sorted(os.listdir(tmp_path)) == ["in.zarr", "o.zarr"]  # the lock is gone with the run


def test_the_lock_is_released_on_cancel_and_on_error(tmp_path, image, model_file):
    cancelled_run(image, model_file, tmp_path / "c.zarr")

    def fail(*_: object) -> None:
        raise RuntimeError("a failing progress callback")

    with pytest.raises(RuntimeError):
        predict(image, model_file, tmp_path / "e.zarr", progress=fail, **API)
    assert sorted(os.listdir(tmp_path)) == ["c.zarr", "e.zarr", "in.zarr"]
    assert predict(image, model_file, tmp_path / "e.zarr", **API).blocks_skipped >= 0


def test_the_stale_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, image, model_file, capsys):
    out = tmp_path / "killed.zarr"
    journal = out / "napari_hires_journal" / "blocks"
    proc = subprocess.Popen([sys.executable, "-c", CLI, "predict", image, str(out), "--model", model_file, *FAST],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if zarr.open_array(str(journal), mode="r")[...].any():
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(os.listdir(tmp_path)) == 3  # the input, the store and the killed run's lock

    assert cli.main(["predict", image, str(out), "--model", model_file, *FAST]) == 0
    captured = capsys.readouterr()
    assert f"pid {proc.pid}" in captured.err and "no longer running" in captured.err
    assert "skipped" in captured.out
    assert sorted(os.listdir(tmp_path)) == ["in.zarr", "killed.zarr"]


# ------------------------------------------------------------------------------ 4. what differs, or done


def test_resuming_with_other_settings_names_what_differs(tmp_path, image, model_file, capsys):
    out = tmp_path / "o.zarr"
    cancelled_run(image, model_file, out)
    argv = ["predict", image, str(out), "--model", model_file, *FAST, "--region", "0", "256", "0", "256"]
    argv[argv.index("--tile") + 1] = "128"
    assert cli.main(argv) == 2
    err = one_line_error(capsys)
    assert "this store was begun with" in err and "this run has" in err and "--overwrite" in err
    begun, now = err.split("this store was begun with")[1].split("this run has")
    assert "tile=256" in begun and "region=None" in begun
    assert "tile=128" in now and "region=(0, 256, 0, 256)" in now


def test_the_same_command_on_a_complete_store_says_so_and_exits_0(tmp_path, image, model_file, capsys):
    out = str(tmp_path / "o.zarr")
    argv = ["predict", image, out, "--model", model_file, *FAST]
    assert cli.main(argv) == 0
    capsys.readouterr()
    before = contents(Path(out))
    assert cli.main(argv) == 0
    summary = capsys.readouterr().out
    assert "complete" in summary and "blocks: " not in summary
    assert contents(Path(out)) == before
    result = predict(image, model_file, out, **API)
    assert result.blocks_done == 0 and result.blocks_skipped == result.blocks_total == 30

    assert cli.main([*argv, "--tile", "128"]) == 2  # another job on the complete store
    err = one_line_error(capsys)
    assert "tile=256" in err and "tile=128" in err and "--overwrite" in err
    assert contents(Path(out)) == before


def test_overwrite_starts_the_same_job_again_instead_of_resuming_or_skipping(tmp_path, image, model_file):
    """--overwrite replaces, as it says: on an unfinished and on a complete store of the same job every block runs."""
    out = tmp_path / "o.zarr"
    cancelled_run(image, model_file, out)
    again = predict(image, model_file, out, overwrite=True, **API)
    assert again.blocks_skipped == 0 and again.blocks_done == again.blocks_total
    once_more = predict(image, model_file, out, overwrite=True, **API)
    assert once_more.blocks_skipped == 0 and once_more.blocks_done == once_more.blocks_total
    assert predict(image, model_file, out, **API).blocks_done == 0
