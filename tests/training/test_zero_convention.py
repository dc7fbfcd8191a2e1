"""Labels where 0 may mean "not painted": scribble-like labels with no convention given are refused with how to
choose; either choice trains as asked and says which convention it used; dense labels train as before."""

import os
import subprocess
import sys

import dask.array as da
import numpy as np
import pytest

from napari_hires.errors import HiresError
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import load_model
from napari_hires.training import TrainSettings, fine_tune

SETTINGS = TrainSettings(steps=2, batch=1, tile=64, device="cpu")


@pytest.fixture(scope="module")
def slide() -> tuple[np.ndarray, np.ndarray]:
    """Level 0 of a 512 x 512 synthetic slide and its dense ground truth (0 = background, a real class)."""
    image, truth = synthetic_slide((512, 512), seed=3)
    return np.asarray(image.levels[0]), np.asarray(truth.levels[0])


def scribbles(shape: tuple[int, int]) -> np.ndarray:
    """What a napari user paints on an empty Labels layer: a few strokes of labels 1..3 on 0."""
    labels = np.zeros(shape, np.uint8)
    labels[100:106, 40:400] = 1
    labels[250:256, 100:300] = 2
    labels[300:420, 200:205] = 3
    return labels


PAINTED = 6 * 360 + 6 * 200 + 120 * 5


def test_scribbles_without_a_convention_are_refused_saying_how_to_choose(slide, tmp_path):
    image, _ = slide
    with pytest.raises(HiresError) as err:
        fine_tune(image, scribbles(image.shape[:2]), "hct_tiny_seg", tmp_path / "m", settings=SETTINGS)
    message = str(err.value)
    assert "\n" not in message and "zero_is_unlabelled=True" in message and "zero_is_unlabelled=False" in message
    assert "--zero-is-unlabelled" in message and "--zero-is-class" in message
    assert not list(tmp_path.iterdir())


def test_scribbles_with_zero_unlabelled_train_on_the_painted_pixels_only(slide, tmp_path):
    image, _ = slide
    job = fine_tune(image, scribbles(image.shape[:2]), "hct_tiny_seg", tmp_path / "m", zero_is_unlabelled=True,
                    settings=SETTINGS)
    assert job.zero_is_unlabelled is True
    data = load_model(job.path).card.provenance["data"]
    assert data["labelled_pixels"] == PAINTED and data["zero_is_unlabelled"] is True


def test_scribbles_with_zero_as_a_class_train_every_pixel_on_purpose(slide, tmp_path):
    image, _ = slide
    job = fine_tune(image, scribbles(image.shape[:2]), "hct_tiny_seg", tmp_path / "m", zero_is_unlabelled=False,
                    settings=SETTINGS)
    assert job.zero_is_unlabelled is False
    assert load_model(job.path).card.provenance["data"]["labelled_pixels"] == image.shape[0] * image.shape[1]


def test_dense_labels_train_with_zero_as_a_class_without_being_asked(slide, tmp_path):
    image, truth = slide
    box = (256, 512, 256, 512)
    y0, y1, x0, x1 = box
    assert 0 < (truth[y0:y1, x0:x1] == 0).mean() < 0.6 and len(np.unique(truth[y0:y1, x0:x1])) >= 3
    job = fine_tune(image, truth, "hct_tiny_seg", tmp_path / "m", regions=[box], settings=SETTINGS)
    assert job.zero_is_unlabelled is False
    assert load_model(job.path).card.provenance["data"]["labelled_pixels"] == 256 * 256


@pytest.fixture(scope="module")
def scribbled_store(tmp_path_factory):
    """The same slide as an OME-Zarr store with the scribbles as its labels, as napari-hires writes them."""
    image, _ = synthetic_slide((512, 512), seed=3)
    painted = Pyramid([da.from_array(scribbles((512, 512)), chunks=256)], "yx", (1.0, 1.0), (0.0, 0.0),
                      name="painted", kind="labels")
    path = tmp_path_factory.mktemp("zero") / "slide.zarr"
    write_ome_zarr(image, path, labels={"painted": painted}, chunk=256, progress=False)
    return path


def _train(store, out, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_hires.cli", "train", str(store),
                           str(store / "labels" / "painted"), "--model", "hct_tiny_seg", "--out", str(out),
                           "--steps", "2", "--batch", "1", "--tile", "64", "--device", "cpu", "--quiet", *flags],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_refuses_scribbles_without_a_convention_in_one_line(scribbled_store, tmp_path):
    proc = _train(scribbled_store, tmp_path / "m.safetensors")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("napari-hires train: error:") and "--zero-is-unlabelled" in line
    assert "--zero-is-class" in line and not list(tmp_path.iterdir())


@pytest.mark.parametrize("flag, says, painted", [("--zero-is-unlabelled", "0 is unlabelled", PAINTED),
                                                 ("--zero-is-class", "0 is a class", 512 * 512)])
def test_cli_trains_with_the_chosen_convention_and_says_which(scribbled_store, tmp_path, flag, says, painted):
    out = tmp_path / "m.safetensors"
    proc = _train(scribbled_store, out, flag)
    assert proc.returncode == 0, proc.stderr
    assert says in proc.stdout, proc.stdout
    assert load_model(out).card.provenance["data"]["labelled_pixels"] == painted
