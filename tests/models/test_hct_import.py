"""HCT from its official checkpoints: the reference fixture (whiterabbit-ai/hct HCTBase, random weights) reproduced
through the importer and create_model; the configuration read from the file; the card."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from napari_hires.errors import HiresError
from napari_hires.models import create_model
from napari_hires.models.importers import import_checkpoint
from reference import REFERENCE, rel

CHECKPOINT = REFERENCE / "hct_official.pth"
pytestmark = pytest.mark.skipif(not CHECKPOINT.is_file(), reason="the reference fixtures are not on this machine")



@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.from_numpy(np.load(REFERENCE / "hct_input.npy", allow_pickle=False))  # (2, 1, 256, 320)


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    return np.load(REFERENCE / "hct_output.npy", allow_pickle=False)


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_the_official_checkpoint_reproduces_the_official_logits_and_stage_outputs(image, logits):
    model = import_checkpoint(CHECKPOINT)
    seen: dict[str, torch.Tensor] = {}
    official = {"conv_stages.first_pool": model.backbone.stem}
    official.update({f"conv_stages.layer_list.{s}": model.backbone.stages[s] for s in range(3)})
    official.update({f"ac_stages.layer_list.{s}": model.backbone.stages[3 + s] for s in range(2)})
    for name, module in official.items():
        module.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out))
    assert rel(logits, _run(model, image)) <= 1e-5
    with np.load(REFERENCE / "hct_intermediates.npz", allow_pickle=False) as ref:
        assert sorted(ref.files) == sorted(seen)
        for name in ref.files:
            assert rel(ref[name], seen[name]) <= 1e-5, name


def test_create_model_takes_the_card_less_checkpoint(image, logits):
    model = create_model(CHECKPOINT)
    assert model.trained and model.architecture == "hct_base"
    assert rel(logits, _run(model, image)) <= 1e-5


def test_the_card_names_the_source_and_reads_16_bit_images_as_they_are():
    card = import_checkpoint(CHECKPOINT).card
    source = card.provenance["imported_from"]
    assert (source["name"], source["code"], source["task"], source["format"]) == (
        "hct_base", "whiterabbit-ai/hct HCTBase", "classification", "torch")
    assert card.task == "classification" and (card.in_channels, card.out_channels) == (1, 2)
    assert card.overrides == {}  # the fixture is the published configuration
    assert (card.normalization.mean, card.normalization.std) == ([0.0], [1.0])
    assert card.normalization.scale == pytest.approx(1 / 65535)  # 16-bit mammograms, fed on 0..1
    with torch.device("meta"):
        published = create_model("hct_base")
    assert (card.tile_size, card.halo, card.input_multiple) == (published.tile_size, published.halo, 1)


def test_the_configuration_comes_from_the_file(tmp_path, image):
    """One block fewer in the last AC stage: the importer reads (2, 2, 2, 2, 1) from the layer lists."""
    state = torch.load(CHECKPOINT, weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith("ac_stages.layer_list.1.1.")},
               tmp_path / "shorter.pth")
    model = import_checkpoint(tmp_path / "shorter.pth")
    assert model.config.blocks == (2, 2, 2, 2, 1)
    assert model.card.overrides == {"blocks": (2, 2, 2, 2, 1)}
    assert torch.equal(model.state_dict()["head.classifier.weight"], state["classifier.weight"])


def test_an_architecture_that_is_not_an_hct_classifier_is_refused_with_the_ones_it_imports():
    with pytest.raises(HiresError, match="hct_base_seg is not an HCT classifier configuration napari-hires imports; "
                                         "name one of hct_base, hct_tiny_cls"):
        import_checkpoint(CHECKPOINT, "hct_base_seg")
