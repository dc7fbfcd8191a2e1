"""Every writer checks its output the same way before any work: never over, around or inside one of its inputs,
never over data napari-hires did not write (even with --overwrite), and only where it can write."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_hires.cli.train import add_parser as add_train_parser
from napari_hires.errors import HiresError
from napari_hires.io.ome_zarr_writer import write_ome_zarr
from napari_hires.io.pyramid import Pyramid
from napari_hires.io.pyramid_builder import build_pyramid
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.labels.export import export_labels
from napari_hires.models import create_model, save_model


def train(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *argv])
    return args.func(args)


def contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    image, labels = synthetic_slide((512, 512), seed=4, chunk=256)
    path = tmp_path_factory.mktemp("slide") / "slide.zarr"
    write_ome_zarr(image, path, labels={"truth": labels}, chunk=256)
    return path


def test_train_into_a_read_only_folder_fails_before_training(slide, read_only_dir, capsys):
    with pytest.raises(HiresError, match=f"cannot write {read_only_dir}/.*: read-only file system"):
        train(str(slide), "--self-supervised", "--out", str(read_only_dir / "denoiser"), "--steps", "2",
              "--batch", "1", "--tile", "64")
    assert "step" not in capsys.readouterr().out


def test_train_never_writes_over_the_model_it_starts_from(slide, tmp_path, capsys):
    base = save_model(create_model("hct_tiny_seg"), tmp_path / "base.safetensors")
    before = contents(tmp_path)
    with pytest.raises(HiresError, match="input"):
        train(str(slide), str(slide / "labels" / "truth"), "--model", str(base), "--out", str(base), "--overwrite",
              "--steps", "2", "--batch", "1", "--tile", "64")
    assert "step" not in capsys.readouterr().out
    assert contents(tmp_path) == before


def test_pyramid_refuses_an_output_inside_its_input(slide, tmp_path):
    before = contents(slide)
    with pytest.raises(HiresError, match="input"):
        build_pyramid(slide, slide / "copy.zarr")
    assert contents(slide) == before


def test_export_refuses_to_replace_a_zarr_store_napari_hires_did_not_write(tmp_path):
    foreign = tmp_path / "theirs.zarr"
    zarr.open_group(str(foreign), mode="w").create_array("0", shape=(8, 8), dtype="uint8")[...] = 3
    before = contents(foreign)
    labels = Pyramid([da.from_array(np.ones((64, 64), np.uint8))], "yx", (1.0, 1.0), (0.0, 0.0), kind="labels")
    with pytest.raises(HiresError, match="did not write"):
        export_labels(labels, foreign, overwrite=True)
    assert contents(foreign) == before
    ours = export_labels(labels, tmp_path / "ours.zarr")
    assert export_labels(labels, ours, overwrite=True) == ours  # its own earlier export is replaced
