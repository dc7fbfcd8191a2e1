"""A segmenter's encoder from a trained or published model of its family: configuration and weights carried over,
a fresh head, the first conv adapted to other channels, and clear errors for what cannot fit."""

from __future__ import annotations

import pytest
import torch

from napari_hires.errors import HiresError
from napari_hires.models import create_model, load_model, save_model


def _same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_encoder_brings_its_configuration_and_weights_and_the_head_stays_new():
    source = create_model("maxvit_nano_seg.synthetic")
    model = create_model("maxvit_tiny_seg", encoder="maxvit_nano_seg.synthetic", num_classes=3)
    assert model.config.widths == source.config.widths and model.config.window_size == source.config.window_size
    assert model.config.padding == "symmetric" and model.out_channels == 3
    assert model.config.decoder_width == create_model("maxvit_tiny_seg").config.decoder_width  # the head is its own
    assert _same_tensors(model.backbone, source.backbone)
    assert model.trained is False and model.encoder["from"] == "maxvit_nano_seg.synthetic"


def test_a_model_with_an_encoder_rebuilds_from_its_card(tmp_path):
    model = create_model("maxvit_tiny_seg", encoder="maxvit_nano_seg.synthetic", num_classes=3).eval()
    path = save_model(model, tmp_path / "seg.safetensors")
    again = load_model(path)
    assert _same_tensors(again, model)
    assert again.card.provenance["encoder"]["from"] == "maxvit_nano_seg.synthetic"


def test_a_grey_encoder_in_an_rgb_segmenter_sees_a_grey_image_as_before(tmp_path):
    grey = create_model("hct_base").eval()
    grey_file = save_model(grey, tmp_path / "grey.safetensors")  # a trained-looking 1-channel model file
    rgb = create_model("hct_base_seg", encoder=grey_file, in_channels=3).eval()
    assert rgb.in_channels == 3 and rgb.backbone.stem[0].weight.shape[1] == 3
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        before = grey.backbone.stem[0](image)  # the first conv (the pools differ: a segmenter pads its maps)
        after = rgb.backbone.stem[0](image.repeat(1, 3, 1, 1))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


def test_an_encoder_of_another_family_is_refused():
    with pytest.raises(HiresError, match="maxvit model but hct_tiny_seg is a hct model"):
        create_model("hct_tiny_seg", encoder="maxvit_nano_seg.synthetic")


def test_an_untrained_encoder_is_refused():
    with pytest.raises(HiresError, match="no trained weights"):
        create_model("maxvit_nano_seg", encoder="maxvit_nano_cls")


def test_the_encoders_own_configuration_cannot_be_overridden():
    with pytest.raises(HiresError, match="window_size of the encoder cannot be changed"):
        create_model("maxvit_nano_seg", encoder="maxvit_nano_seg.synthetic", window_size=8)


def test_trained_weights_take_no_encoder():
    with pytest.raises(HiresError, match="holds trained weights already"):
        create_model("maxvit_nano_seg.synthetic", encoder="maxvit_nano_seg.synthetic")


def test_fine_tuning_trains_a_pretrained_encoder_at_a_lower_learning_rate():
    from napari_hires.training import TrainSettings
    from napari_hires.training.loop import parameter_groups

    model = create_model("maxvit_nano_seg", encoder="maxvit_nano_seg.synthetic", num_classes=2)
    head, encoder = parameter_groups(model, TrainSettings(lr=1e-3, encoder_lr=0.1))
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.backbone.parameters()}
    assert encoder["lr"] == pytest.approx(1e-4) and "lr" not in head  # the head takes the optimiser's lr
    assert len(head["params"]) + len(encoder["params"]) == len(list(model.parameters()))
    assert len(parameter_groups(create_model("maxvit_nano_seg"), TrainSettings())) == 1
