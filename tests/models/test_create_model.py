"""One way in for models: ``create_model`` takes a registered name, a name with a weights tag, a model file or an
instance, and every model it gives declares what it is (name, tag, overrides, card, whether it is trained)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models import HiresModel, create_model, list_models, load_model, model_entry, save_model


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("tagged, alias", [("hct_tiny_seg.synthetic", "hct_tiny_seg_synthetic"),
                                           ("maxim_nano.denoise_synthetic", "maxim_nano_denoise_synthetic")])
def test_a_weights_tag_gives_the_same_weights_as_the_old_name(tagged, alias):
    assert _same_weights(create_model(tagged), create_model(alias))


def test_the_old_name_is_an_alias_of_the_tagged_name():
    assert model_entry("hct_tiny_seg_synthetic") == model_entry("hct_tiny_seg.synthetic")
    assert create_model("hct_tiny_seg_synthetic").name == "hct_tiny_seg.synthetic"


def test_a_model_file_gives_what_load_model_gives(tmp_path):
    path = save_model(create_model("hct_tiny_seg", num_classes=3), tmp_path / "three.safetensors")
    from_file, loaded = create_model(path), load_model(path)
    assert _same_weights(from_file, loaded)
    assert from_file.card == loaded.card and (from_file.halo, from_file.tile_size) == (loaded.halo, loaded.tile_size)
    assert _same_weights(create_model(str(tmp_path / "three.json")), loaded)


def test_an_instance_is_returned_as_it_is():
    model = create_model("hct_tiny_cls")
    assert create_model(model) is model


def test_a_module_that_is_not_a_hires_model_is_refused_in_one_line():
    with pytest.raises(HiresError, match=r"^Conv2d is not a napari_hires HiresModel: [^\n]*$"):
        create_model(nn.Conv2d(3, 4, 3))


def test_a_tagged_model_declares_its_name_tag_card_and_that_it_is_trained():
    model = create_model("hct_tiny_seg.synthetic")
    assert (model.name, model.architecture, model.tag) == ("hct_tiny_seg.synthetic", "hct_tiny_seg", "synthetic")
    assert model.trained is True and model.card.architecture == "hct_tiny_seg" and model.overrides == {}


def test_an_architecture_declares_its_name_and_overrides_and_that_it_is_untrained():
    model = create_model("hct_tiny_seg", num_classes=3)
    assert (model.name, model.architecture, model.tag) == ("hct_tiny_seg", "hct_tiny_seg", None)
    assert model.overrides == {"num_classes": 3} and model.trained is False and model.card is None


def test_a_model_built_by_hand_declares_that_nothing_is_known_of_it():
    class ByHand(HiresModel):
        task, in_channels, out_channels = "segmentation", 3, 2

    model = ByHand()
    assert (model.name, model.architecture, model.tag, model.card, model.trained) == (None, None, None, None, None)
    assert model.overrides == {}


def test_a_loaded_file_declares_its_card_and_that_it_is_trained(tmp_path):
    path = save_model(create_model("hct_tiny_seg", num_classes=3), tmp_path / "three")
    model = create_model(path)
    assert (model.name, model.tag, model.overrides) == ("hct_tiny_seg", None, {"num_classes": 3})
    assert model.trained is True and model.card.overrides == {"num_classes": 3}


def test_an_unknown_tag_is_refused_with_the_known_tags():
    with pytest.raises(HiresError, match=r"unknown weights tag 'nosuch' for hct_tiny_seg.*known tags: synthetic"):
        create_model("hct_tiny_seg.nosuch")


def test_a_tag_of_an_architecture_without_trained_weights_says_it_has_none():
    with pytest.raises(HiresError, match=r"hct_tiny_cls has no trained weights"):
        create_model("hct_tiny_cls.synthetic")


def test_overrides_of_trained_weights_are_refused():
    with pytest.raises(HiresError, match=r"hct_tiny_seg\.synthetic.*fixed.*num_classes"):
        create_model("hct_tiny_seg.synthetic", num_classes=3)


def test_overrides_of_a_model_file_are_refused(tmp_path):
    path = save_model(create_model("hct_tiny_seg", num_classes=3), tmp_path / "three")
    with pytest.raises(HiresError, match=r"three.*card.*num_classes"):
        create_model(path, num_classes=5)


def test_entries_say_whether_and_on_what_a_model_was_trained():
    tagged, plain = model_entry("hct_tiny_seg.synthetic"), model_entry("hct_tiny_seg")
    assert tagged.trained and "synthetic slide" in tagged.trained_on and tagged.tag == "synthetic"
    assert not plain.trained and plain.trained_on == "" and plain.architecture == "hct_tiny_seg"


def test_the_trained_models_are_listed_once_each_by_their_tagged_names():
    trained = list_models(trained=True, aliases=False)
    assert {"hct_tiny_seg.synthetic", "maxvit_nano_seg.synthetic", "xt_nano_seg.synthetic",
            "maxim_nano.denoise_synthetic"} <= set(trained)
    assert "hct_tiny_seg_synthetic" not in trained and all(model_entry(n).trained for n in trained)
    assert "hct_tiny_seg" in list_models(trained=False) and "hct_tiny_seg" not in trained
