"""Model files round-trip exactly and refuse what they should; the registry takes third-party models."""

from __future__ import annotations

import json
import inspect
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models import HiresModel, ModelCard, create_model, list_models, load_model, register_model, save_model
from napari_hires.models import registry


class TinySegmenter(HiresModel):
    """A two-layer conv net: enough to exercise files and the registry without a real family."""

    task = "segmentation"

    def __init__(self, in_channels: int = 3, num_classes: int = 4, width: int = 8) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.input_multiple, self.halo = in_channels, num_classes, 4, 2
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, num_classes, 1))
        self.register_buffer("fixed", torch.randn(5, 3))

    def forward_padded(self, x):
        return self.body(x)


register_model("test_tiny_seg", family="test", task="segmentation")(TinySegmenter)


def test_save_load_round_trip_is_exact(tmp_path):
    torch.manual_seed(0)
    model = create_model("test_tiny_seg", width=6)
    model.body[1].running_mean.normal_()  # buffers travel too
    path = save_model(model, tmp_path / "m.safetensors")
    assert path.exists() and (tmp_path / "m.json").exists()
    loaded = load_model(tmp_path / "m.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = torch.rand(2, 3, 13, 18)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    assert loaded.card.overrides == {"width": 6} and loaded.card.halo == 2


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    save_model(create_model("test_tiny_seg", width=6), tmp_path / "m")
    card = json.loads((tmp_path / "m.json").read_text())
    card["overrides"] = {"width": 7}
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(HiresError, match=r"body\.0\.weight.*\(6, 3, 3, 3\).*\(7, 3, 3, 3\)"):
        load_model(tmp_path / "m.safetensors")


def test_missing_card_unknown_architecture_and_wrong_channels(tmp_path):
    save_model(create_model("test_tiny_seg"), tmp_path / "m")
    card = json.loads((tmp_path / "m.json").read_text())
    (tmp_path / "m.json").unlink()
    with pytest.raises(HiresError, match="no model card"):
        load_model(tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text(json.dumps({**card, "architecture": "test_tiny_sek"}))
    with pytest.raises(HiresError, match="unknown model 'test_tiny_sek'.*test_tiny_seg"):
        load_model(tmp_path / "m.safetensors")
    (tmp_path / "m.json").write_text(json.dumps({**card, "in_channels": 1}))
    with pytest.raises(HiresError, match="in_channels"):
        load_model(tmp_path / "m.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_pickles_are_refused_unless_weights_only(tmp_path, capsys):
    model = create_model("test_tiny_seg")
    card = ModelCard(architecture="test_tiny_seg", task="segmentation", in_channels=3, out_channels=4)
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    (tmp_path / "plain.json").write_text(card.to_json())
    loaded = load_model(tmp_path / "plain.pt")
    assert torch.equal(loaded.body[0].weight, model.body[0].weight)

    torch.save({"weights": model.state_dict(), "evil": _Payload()}, tmp_path / "evil.pth")
    (tmp_path / "evil.json").write_text(card.to_json())
    with pytest.raises(HiresError, match="never unpickles"):
        load_model(tmp_path / "evil.pth")
    assert "pickle code ran" not in capsys.readouterr().out


def test_third_party_models_join_through_entry_points(tmp_path, monkeypatch):
    dist = tmp_path / "hires_extra-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hires-extra\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[napari_hires.models]\nextra = hires_extra:register\n")
    (tmp_path / "hires_extra.py").write_text(textwrap.dedent("""
        from tests_support_tiny import TinySegmenter
        from napari_hires.models import register_model
        def register():
            register_model("extra_seg", family="extra", task="segmentation")(TinySegmenter)
    """))
    (tmp_path / "tests_support_tiny.py").write_text(
        "import torch\nfrom torch import nn\nfrom napari_hires.models.base import HiresModel\n\n"
        + textwrap.dedent(inspect.getsource(TinySegmenter))
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_loaded", False)
    assert "extra_seg" in list_models(task="segmentation")
    assert create_model("extra_seg")(torch.rand(1, 3, 8, 8)).shape == (1, 4, 8, 8)
    monkeypatch.delitem(registry._REGISTRY, "extra_seg")


def test_padding_gives_back_input_size_and_checks_channels():
    model = create_model("test_tiny_seg").eval()
    assert model(torch.rand(1, 3, 13, 18)).shape == (1, 4, 13, 18)
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        model(torch.rand(1, 1, 13, 18))


def test_an_untrained_architecture_has_the_same_weights_in_every_process_and_leaves_the_rng_alone(tmp_path):
    """create_model without weights is deterministic (so reruns resume), without touching the caller's RNG."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    here = create_model("hct_tiny_seg").state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    saved = tmp_path / "there.pt"
    code = ("import sys, torch; torch.manual_seed(7); from napari_hires.models import create_model; "
            "torch.save(create_model('hct_tiny_seg').state_dict(), sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(saved)], check=True, timeout=300)
    there = torch.load(saved, weights_only=True)
    assert here.keys() == there.keys()
    assert all(torch.equal(here[k], there[k]) for k in here)
