"""Model cards are validated on load: a bad field is a one-line error naming the file, field, value and range."""

from __future__ import annotations

import json
import re
from importlib.resources import files

import pytest
import torch

from napari_hires.errors import HiresError
from napari_hires.models import ModelCard, create_model, load_model, save_model
from napari_hires.models.files import card_for

#: A real card: the shipped segmenter's (3 input channels, 4 classes, tile 512).
SHIPPED_CARD = json.loads((files("napari_hires") / "weights" / "hct_tiny_seg_synthetic.json").read_text())


def _card_file(tmp_path, **changes) -> str:
    card = {**SHIPPED_CARD, **changes}
    path = tmp_path / "m.json"
    path.write_text(json.dumps(card))
    return str(path)


@pytest.mark.parametrize("changes, words", [
    ({"tile_size": 0}, "tile_size is 0; it must be a whole number of at least 1"),
    ({"halo": -5}, "halo is -5; it must be a whole number of 0 or more"),
    ({"halo": 256}, "halo is 256; it must be less than half of tile_size (512)"),
    ({"input_multiple": 0}, "input_multiple is 0; it must be a whole number of at least 1"),
    ({"in_channels": 0}, "in_channels is 0; it must be a whole number of at least 1"),
    ({"out_channels": 2.5}, "out_channels is 2.5; it must be a whole number of at least 1"),
    ({"task": "segmentaton"}, "task is 'segmentaton'; it must be one of segmentation, restoration, classification"),
    ({"class_names": {"0": "background", "7": "necrosis"}}, "class_names has label 7; labels must be 0 to 3"),
    ({"class_colors": {"1": [1.0, 0.0]}}, "class_colors[1] is [1.0, 0.0]; it must be 3 or 4 numbers from 0 to 1"),
    ({"normalization": {"scale": 0.5, "mean": [0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
     "normalization.mean is [0.5, 0.5]; it must be 3 numbers (one per input channel)"),
    ({"normalization": {"scale": 0.5, "mean": [0.5] * 3, "std": [0.25, 0.0, 0.25]}},
     "normalization.std is [0.25, 0.0, 0.25]; it must be 3 numbers (one per input channel), each greater than 0"),
    ({"normalization": {"scale": -1, "mean": [0.5] * 3, "std": [0.25] * 3}},
     "normalization.scale is -1; it must be a number greater than 0"),
    ({"normalization": {"scale": 1, "offset": 3}}, "normalization has unknown fields ['offset']"),
    ({"class_names": {"one": "stroma"}}, "class_names has label 'one'; labels must be whole numbers"),
    ({"version": 0}, "version is 0; it must be a whole number from 1 to 1"),
])
def test_bad_card_fields_name_the_file_field_value_and_range(tmp_path, changes, words):
    path = _card_file(tmp_path, **changes)
    with pytest.raises(HiresError, match=re.escape(f"{path}: {words}")):
        ModelCard.read(path)


def test_restoration_cards_have_no_classes(tmp_path):
    path = _card_file(tmp_path, task="restoration", out_channels=3)
    with pytest.raises(HiresError, match=re.escape(f"{path}: class_names has label 0; a restoration model has no "
                                                   "classes")):
        ModelCard.read(path)


def test_load_model_refuses_a_bad_card_and_save_model_refuses_to_write_one(tmp_path):
    torch.manual_seed(0)
    model = create_model("hct_tiny_seg")
    save_model(model, tmp_path / "m")
    card = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").write_text(json.dumps({**card, "halo": -5}))
    with pytest.raises(HiresError, match=re.escape(f"{tmp_path / 'm.json'}: halo is -5")):
        load_model(tmp_path / "m.safetensors")
    with pytest.raises(HiresError, match="tile_size is 0"):
        save_model(model, tmp_path / "bad", card_for(model, tile_size=0))
    assert not (tmp_path / "bad.safetensors").exists() and not (tmp_path / "bad.json").exists()


def test_shipped_and_saved_cards_are_valid(tmp_path):
    for name in ("hct_tiny_seg_synthetic", "maxvit_nano_seg_synthetic", "xt_nano_seg_synthetic",
                 "maxim_nano_denoise_synthetic"):
        ModelCard.read(files("napari_hires") / "weights" / f"{name}.json")
    model = create_model("hct_tiny_seg", in_channels=1)
    save_model(model, tmp_path / "gray")
    assert load_model(tmp_path / "gray").card.normalization.mean == [0.5]  # one value per input channel
