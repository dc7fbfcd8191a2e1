"""MaxViT from timm / Hugging Face: the reference fixture (timm's maxvit_tiny_tf_224 made small, random weights)
reproduced through the importer, the CLI and create_model; configuration from config.json, the architecture name or
the tensor shapes; a classifier-less checkpoint as an encoder; the published configurations' sizes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_hires import cli
from napari_hires.errors import HiresError
from napari_hires.models import count_parameters, create_model
from napari_hires.models.importers import import_checkpoint
from napari_hires.models.maxvit import MaxViTBackbone, MaxViTConfig
from napari_hires.models.published.maxvit import maxvit_tensor_map
from reference import REFERENCE, rel

WEIGHTS, CONFIG = REFERENCE / "maxvit_timm.safetensors", REFERENCE / "maxvit_timm_config.json"
pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="the reference fixtures are not on this machine")



@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    """The fixture laid out as a Hugging Face timm repository: model.safetensors with config.json beside it."""
    shutil.copy(WEIGHTS, tmp_path / "model.safetensors")
    shutil.copy(CONFIG, tmp_path / "config.json")
    return tmp_path


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.from_numpy(np.load(REFERENCE / "maxvit_input.npy", allow_pickle=False))  # (2, 3, 256, 512)


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_the_fixture_with_its_config_json_reproduces_timms_logits_and_stages(hf_dir, image):
    model = import_checkpoint(hf_dir / "model.safetensors")
    seen: dict[str, torch.Tensor] = {}
    for i in (1, 2, 3):
        model.backbone.stages[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(f"stages.{i}", out))
    model.head.pre_logits.register_forward_hook(lambda m, a, out: seen.__setitem__("head.pre_logits", out.tanh()))
    logits = _logits(model, image)
    assert rel(np.load(REFERENCE / "maxvit_output.npy", allow_pickle=False), logits) <= 1e-5
    with np.load(REFERENCE / "maxvit_intermediates.npz", allow_pickle=False) as ref:
        assert sorted(ref.files) == sorted(seen)
        for name in ref.files:
            assert rel(ref[name], seen[name]) <= 1e-5, name


def test_the_card_says_source_task_classes_normalisation_and_tiling(hf_dir):
    card = import_checkpoint(hf_dir / "model.safetensors").card
    source = card.provenance["imported_from"]
    assert (source["name"], source["code"], source["configuration"]) == (
        "maxvit_tiny_tf_224", "timm maxvit_tiny_tf_224", "config.json")
    assert "MaxViT" in source["paper"] and source["format"] == "safetensors"
    assert card.task == "classification" and card.out_channels == 2
    assert card.normalization.mean == [0.485, 0.456, 0.406] and card.normalization.std == [0.229, 0.224, 0.225]
    assert card.normalization.scale == pytest.approx(1 / 255)
    assert (card.tile_size, card.halo, card.input_multiple) == (256, 0, 256)  # img_size 256: window 8


def test_napari_hires_import_writes_a_model_file_that_create_model_loads(hf_dir, image, tmp_path, capsys):
    out = tmp_path / "out" / "maxvit.safetensors"
    out.parent.mkdir()
    assert cli.main(["import", str(hf_dir / "model.safetensors"), "--out", str(out)]) == 0
    assert "maxvit_tiny_tf_224" in capsys.readouterr().out
    loaded = create_model(out)
    assert loaded.card.provenance["imported_from"]["name"] == "maxvit_tiny_tf_224"
    assert rel(np.load(REFERENCE / "maxvit_output.npy", allow_pickle=False), _logits(loaded, image)) <= 1e-5


def test_create_model_takes_the_checkpoint_itself(hf_dir, image):
    model = create_model(hf_dir / "model.safetensors")
    assert model.trained and model.architecture == "maxvit_tiny_tf_224"
    assert rel(np.load(REFERENCE / "maxvit_output.npy", allow_pickle=False), _logits(model, image)) <= 1e-5


def test_without_config_json_the_configuration_comes_from_the_tensor_shapes(tmp_path, image):
    shutil.copy(WEIGHTS, tmp_path / "weights.safetensors")
    model = import_checkpoint(tmp_path / "weights.safetensors")
    assert model.card.provenance["imported_from"]["configuration"] == "tensor shapes"
    cfg = model.config
    assert (cfg.stem_width, cfg.depths, cfg.widths, cfg.head_size, cfg.window_size, cfg.num_classes) == (
        16, (1, 2, 1, 1), (32, 48, 64, 96), 16, 8, 2)
    assert rel(np.load(REFERENCE / "maxvit_output.npy", allow_pickle=False), _logits(model, image)) <= 1e-5


def test_a_pth_state_dict_imports_like_the_safetensors_file(tmp_path, image):
    torch.save(load_file(WEIGHTS), tmp_path / "pytorch_model.pth")  # timm's torch.save(model.state_dict())
    model = import_checkpoint(tmp_path / "pytorch_model.pth")
    assert model.card.provenance["imported_from"]["format"] == "torch"
    assert rel(np.load(REFERENCE / "maxvit_output.npy", allow_pickle=False), _logits(model, image)) <= 1e-5


def test_model_args_our_maxvit_does_not_have_are_refused(hf_dir):
    config = json.loads(CONFIG.read_text())
    config["model_args"]["transformer_rel_pos_type"] = "mlp"
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(HiresError, match="model_args transformer_rel_pos_type='mlp' in config.json is not something"):
        import_checkpoint(hf_dir / "model.safetensors")


def test_a_mismatched_architecture_lists_missing_and_unexpected_tensors_and_the_first_shape_mismatch():
    """The published MaxViT-T has 2 blocks in stage 0 and no shortcut conv there (stem and stage 0 are both 64 wide)."""
    with pytest.raises(HiresError) as err:
        import_checkpoint(WEIGHTS, "maxvit_tiny_tf_224")
    message = str(err.value)
    assert "does not match maxvit_tiny_tf_224" in message
    assert "missing tensors (stages.0.blocks.1.conv.pre_norm.weight" in message
    assert "2 unexpected tensors (stages.0.blocks.0.conv.shortcut.expand" in message
    assert "first shape mismatch: stem.conv1.weight is (16, 3, 3, 3) in the file but maxvit_tiny_tf_224 expects " \
           "(64, 3, 3, 3)" in message


def test_a_config_json_that_disagrees_with_the_architecture_asked_for_is_refused(hf_dir):
    with pytest.raises(HiresError, match="config.json says maxvit_tiny_tf_224 but the architecture asked for is "
                                         "maxvit_base_tf_384"):
        import_checkpoint(hf_dir / "model.safetensors", "maxvit_base_tf_384")


def test_a_checkpoint_without_classifier_imports_as_an_encoder_for_a_segmenter(tmp_path, image):
    """timm's features_only naming (stages_N), no head: a segmenter whose backbone gives timm's stage maps."""
    flat = {k.replace("stages.", "stages_", 1): v for k, v in load_file(WEIGHTS).items() if not k.startswith("head.")}
    save_file(flat, tmp_path / "features.safetensors")
    encoder = import_checkpoint(tmp_path / "features.safetensors")
    assert encoder.task == "segmentation" and encoder.card.provenance["imported_from"]["task"] == "features"
    with torch.no_grad():
        maps = encoder.backbone.forward_features(image)
    with np.load(REFERENCE / "maxvit_intermediates.npz", allow_pickle=False) as ref:
        for i in (1, 2, 3):
            assert rel(ref[f"stages.{i}"], maps[i]) <= 1e-5  # maps 0..3: strides 4..32 = stages 0..3
    seg = create_model("maxvit_tiny_seg", encoder=tmp_path / "features.safetensors", num_classes=3)
    assert seg.config.widths == (32, 48, 64, 96) and seg.config.padding == "same" and seg.out_channels == 3
    assert all(torch.equal(seg.backbone.state_dict()[k], v) for k, v in encoder.backbone.state_dict().items())


def test_the_tensor_map_takes_a_prefix_and_timms_features_only_flattening():
    """xT's checkpoints hold a timm features_only MaxViT as encoder.model.stages_N.*: the map names exactly those."""
    spec = json.loads((REFERENCE / "fixtures.json").read_text())["fixtures"]["xt"]["checkpoint"]["tensors"]
    published = {k.removeprefix("module.") for k in spec if k.startswith("module.encoder.model.")}
    backbone = MaxViTBackbone(MaxViTConfig(stem_width=16, depths=(1, 1, 1, 1), widths=(32, 48, 64, 96),
                                           head_size=16, window_size=4, out_indices=(1, 2, 3, 4)))
    sources = maxvit_tensor_map(backbone, "encoder.model.", flat_stages=True)
    assert sources.keys() == backbone.state_dict().keys()
    assert set(sources.values()) == published


@pytest.mark.parametrize("name, published", [
    ("maxvit_tiny_tf_224", 30.92e6), ("maxvit_small_tf_224", 68.93e6), ("maxvit_base_tf_224", 119.47e6),
    ("maxvit_large_tf_224", 211.79e6), ("maxvit_xlarge_tf_384", 475.32e6), ("maxvit_base_tf_384", 119.7e6),
])
def test_the_published_configurations_have_timms_parameter_counts(name, published):
    with torch.device("meta"):
        model = create_model(name)
    assert count_parameters(model) == pytest.approx(published, rel=0.005)


def test_every_published_size_and_resolution_is_registered():
    from napari_hires.models import list_models

    names = set(list_models("maxvit_*_tf_*"))
    expected = {f"maxvit_{s}_tf_{r}" for s in ("tiny", "small", "base", "large") for r in (224, 384, 512)}
    assert expected | {"maxvit_xlarge_tf_384", "maxvit_xlarge_tf_512"} <= names
    with torch.device("meta"):
        assert create_model("maxvit_large_tf_224_in21k").out_channels == 21843
        assert create_model("maxvit_small_tf_512").config.window_size == 16
