"""xT from its official trainer checkpoints: the reference fixture (bair-climate-initiative/xT, xl head, timm MaxViT
region encoder, random weights) reproduced through the importer and create_model; the window of regions named by
--architecture; the released Swin-V2 region encoders refused clearly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from napari_hires import cli
from napari_hires.errors import HiresError
from napari_hires.models import create_model
from napari_hires.models.importers import import_checkpoint
from reference import REFERENCE, rel

CHECKPOINT = REFERENCE / "xt_official.pth"
pytestmark = pytest.mark.skipif(not CHECKPOINT.is_file(), reason="the reference fixtures are not on this machine")



@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.from_numpy(np.load(REFERENCE / "xt_input.npy", allow_pickle=False))  # 2 images of 2 x 2 regions


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    return np.load(REFERENCE / "xt_output.npy", allow_pickle=False)


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_the_official_checkpoint_reproduces_the_official_logits_and_context_encoder(image, logits):
    model = import_checkpoint(CHECKPOINT)
    context, seen = model.backbone.context, {}

    def stitched(module, args):  # the context encoder's tokens are the stitched last map, row-major
        b, n, c = args[0].shape
        seen["decoder_input_last"] = args[0].transpose(1, 2).reshape(b, c, 8, n // 8)

    context.register_forward_pre_hook(stitched)
    context.input_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("decoder.input_proj", out))
    for i, layer in enumerate(context.layers):
        layer.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"decoder.layers.{i}", out))
    assert rel(logits, _run(model, image)) <= 1e-5
    with np.load(REFERENCE / "xt_intermediates.npz", allow_pickle=False) as ref:
        assert sorted(ref.files) == sorted(seen)
        for name in ref.files:
            assert rel(ref[name], seen[name]) <= 1e-5, name


def test_create_model_takes_the_card_less_checkpoint(image, logits):
    model = create_model(CHECKPOINT)
    assert model.trained and model.card.provenance["imported_from"]["family"] == "xt"
    assert rel(logits, _run(model, image)) <= 1e-5


def test_napari_hires_import_writes_a_model_file_that_loads_as_the_published_model(tmp_path, image, logits):
    """The card's overrides (the region encoder's configuration among them) survive JSON and rebuild the model."""
    out = tmp_path / "xt.safetensors"
    assert cli.main(["import", str(CHECKPOINT), "--out", str(out)]) == 0
    loaded = create_model(out)
    assert loaded.card.provenance["imported_from"]["file"] == CHECKPOINT.name
    assert rel(logits, _run(loaded, image)) <= 1e-5


def test_the_configuration_comes_from_the_file():
    cfg = import_checkpoint(CHECKPOINT).config
    assert (cfg.hidden, cfg.depth, cfg.mlp_hidden, cfg.num_classes, cfg.region_size) == (256, 2, 512, 10, 128)
    assert cfg.region_encoder == "maxvit"
    region = cfg.region_encoder_args
    assert (region["stem_width"], region["widths"], region["depths"], region["head_size"], region["window_size"],
            region["padding"]) == (16, (32, 48, 64, 96), (1, 1, 1, 1), 16, 4, "same")
    assert import_checkpoint(CHECKPOINT).backbone.context.layers[0].attn.num_heads == 2  # hidden // 128


def test_the_card_says_source_task_imagenet_normalisation_and_a_window_of_regions():
    card = import_checkpoint(CHECKPOINT).card
    source = card.provenance["imported_from"]
    assert (source["code"], source["task"]) == ("bair-climate-initiative/xT xT (cls_head xl)", "classification")
    assert card.task == "classification" and card.out_channels == 10
    assert card.normalization.mean == [0.485, 0.456, 0.406] and card.normalization.std == [0.229, 0.224, 0.225]
    assert card.normalization.scale == pytest.approx(1 / 255)
    # no --architecture: 2 x 2 regions, as the released 512 px crops of 256 px regions
    assert (card.tile_size, card.halo, card.input_multiple) == (256, 0, 128)


def test_an_architecture_name_fixes_the_window_of_regions(image, logits):
    model = import_checkpoint(CHECKPOINT, "xt_nano_cls")
    assert model.card.architecture == "xt_nano_cls" and model.config.window_regions == 8
    assert (model.card.tile_size, model.card.halo) == (1024, 0)
    assert rel(logits, _run(model, image)) <= 1e-5


def test_an_architecture_whose_regions_differ_from_the_files_is_refused():
    with pytest.raises(HiresError, match="xt_maxvit_tiny has regions of 256 px, but the file's MaxViT region "
                                         "encoder has windows of 4 and so regions of 128 px"):
        import_checkpoint(CHECKPOINT, "xt_maxvit_tiny")


def test_the_released_ckpt_suffix_is_read(tmp_path, logits, image):
    """The xT trainer writes .ckpt files (torch.save payloads), as the release ships them."""
    shutil.copy(CHECKPOINT, tmp_path / "xt-top1.ckpt")
    assert rel(logits, _run(import_checkpoint(tmp_path / "xt-top1.ckpt"), image)) <= 1e-5


def test_a_released_xt_with_a_swin_region_encoder_is_refused_clearly(tmp_path):
    payload = torch.load(CHECKPOINT, weights_only=True)
    state = {k: v for k, v in payload["state_dict"].items() if not k.startswith("module.encoder.")}
    state["module.encoder.model.patch_embed.proj.weight"] = torch.zeros(96, 3, 4, 4)
    state["module.encoder.model.layers_0.blocks.0.attn.qkv.weight"] = torch.zeros(288, 96)
    torch.save({**payload, "state_dict": state}, tmp_path / "swin-t-hyper-512-256-top1.ckpt")
    with pytest.raises(HiresError, match="is an xT with a Swin-V2 region encoder .*napari-hires's xT offers MaxViT "
                                         "and HCT region encoders, and Swin-V2 and Hiera are not implemented"):
        import_checkpoint(tmp_path / "swin-t-hyper-512-256-top1.ckpt")
