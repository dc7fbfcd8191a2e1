"""``napari-hires train`` on OME-Zarr files: fine-tuning on labels and self-supervised denoising."""

import argparse

import pytest

from napari_hires.cli.train import add_parser as add_train_parser
from napari_hires.errors import HiresError
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.models import load_model


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    image, labels = synthetic_slide((1024, 1024), seed=4, chunk=256)
    path = tmp_path_factory.mktemp("cli") / "slide.zarr"
    write_ome_zarr(image, path, labels={"truth": labels}, chunk=256, progress=False)
    return path


def test_train_fine_tunes_on_labels_and_writes_a_model(slide, tmp_path, capsys):
    out = tmp_path / "tuned.safetensors"
    assert _run(str(slide), str(slide / "labels" / "truth"), "--model", "hct_tiny_seg", "--out", str(out),
                "--steps", "2", "--batch", "1", "--tile", "128", "--region", "256", "512", "256", "512") == 0
    assert "step 2/2" in capsys.readouterr().out
    card = load_model(out).card
    assert card.provenance["data"]["regions"] == [[256, 512, 256, 512]]
    with pytest.raises(HiresError, match="already exists"):
        _run(str(slide), str(slide / "labels" / "truth"), "--model", "hct_tiny_seg", "--out", str(out))


def test_train_self_supervised_writes_a_restoration_model(slide, tmp_path):
    out = tmp_path / "denoiser"
    assert _run(str(slide), "--self-supervised", "--out", str(out), "--steps", "2", "--batch", "2",
                "--tile", "64", "--quiet") == 0
    model = load_model(out)
    assert model.task == "restoration" and "Noise2Void" in model.card.provenance["objective"]


def test_train_without_labels_or_model_is_a_clear_error(slide, tmp_path):
    with pytest.raises(HiresError, match="needs LABELS"):
        _run(str(slide), "--out", str(tmp_path / "m"))


def test_train_starts_an_architecture_from_an_encoder(slide, tmp_path, capsys):
    out = tmp_path / "from_encoder.safetensors"
    assert _run(str(slide), str(slide / "labels" / "truth"), "--model", "maxvit_nano_seg", "--encoder",
                "maxvit_nano_seg.synthetic", "--encoder-lr", "0.2", "--out", str(out), "--steps", "2", "--batch", "1",
                "--tile", "128", "--holdout", "0", "--region", "256", "512", "256", "512") == 0
    assert "the encoder from maxvit_nano_seg.synthetic, trained at 0.2 x the learning rate" in capsys.readouterr().out
    card = load_model(out).card
    assert card.provenance["encoder"]["from"] == "maxvit_nano_seg.synthetic"
    assert card.provenance["settings"]["encoder_lr"] == 0.2 and card.overrides["window_size"] == 4
