"""A model card records the pixel size its training images had: validated, saved and read back, optional."""

from __future__ import annotations

import json
import re
from importlib.resources import files

import pytest
import torch

from napari_hires.errors import HiresError
from napari_hires.models import ModelCard, create_model, load_model, save_model
from napari_hires.models.files import card_for

SHIPPED_CARD = json.loads((files("napari_hires") / "weights" / "hct_tiny_seg_synthetic.json").read_text())


def _read(tmp_path, **changes) -> ModelCard:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**SHIPPED_CARD, **changes}))
    return ModelCard.read(path)


def test_pixel_size_is_saved_and_loaded_with_the_model(tmp_path):
    torch.manual_seed(0)
    model = create_model("hct_tiny_seg")
    save_model(model, tmp_path / "m", card_for(model, pixel_size=0.5, pixel_unit="micrometer"))
    card = load_model(tmp_path / "m.safetensors").card
    assert (card.pixel_size, card.pixel_unit) == (0.5, "micrometer")


def test_a_card_without_pixel_size_loads_and_is_written_without_it(tmp_path):
    """Old cards have no pixel size; a card without one is written without the keys, so that a napari-hires from
    before them (which refuses unknown fields) still reads it."""
    card = _read(tmp_path)
    assert card.pixel_size is None and card.pixel_unit is None
    assert not {"pixel_size", "pixel_unit"} & set(json.loads(card.to_json()))


def test_remote_sensing_card_in_metres(tmp_path):
    card = _read(tmp_path, pixel_size=10, pixel_unit="meter")
    assert ModelCard.from_json(card.to_json()).pixel_size == 10


@pytest.mark.parametrize("changes, words", [
    ({"pixel_size": 0, "pixel_unit": "micrometer"}, "pixel_size is 0; it must be a number greater than 0, or absent"),
    ({"pixel_size": "0.5", "pixel_unit": "micrometer"}, "pixel_size is '0.5'; it must be a number greater than 0"),
    ({"pixel_size": 0.5}, "pixel_unit is None; it must be given with pixel_size and only with it"),
    ({"pixel_unit": "micrometer"}, "pixel_unit is 'micrometer'; it must be given with pixel_size and only with it"),
    ({"pixel_size": 0.5, "pixel_unit": "inch"}, "pixel_unit is 'inch'; it must be one of micrometer, meter"),
])
def test_bad_pixel_size_names_the_file_field_value_and_range(tmp_path, changes, words):
    with pytest.raises(HiresError, match=re.escape(f"{tmp_path / 'm.json'}: {words}")):
        _read(tmp_path, **changes)
