"""The seam every published checkpoint goes through: one error for a file that does not fit, a clear one for a
truncated file, a pickle payload refused without running it, and ``napari-hires import``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_hires import cli
from napari_hires.errors import HiresError
from napari_hires.models.checkpoints import read_checkpoint
from napari_hires.models.importers import import_checkpoint
from reference import REFERENCE

HCT = REFERENCE / "hct_official.pth"
pytestmark = pytest.mark.skipif(not HCT.is_file(), reason="the reference fixtures are not on this machine")


class Payload:
    """An object whose unpickling writes ``marker``: what a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_mismatched_checkpoint_lists_missing_and_unexpected_tensors_and_the_first_shape_mismatch(tmp_path):
    state = torch.load(HCT, weights_only=True)
    state["conv_stages.layer_list.1.0.conv_2.weight"] = state.pop("conv_stages.layer_list.1.0.conv2.weight")
    state["ac_stages.layer_list.0.1.performer_attention.to_query.bias"] = state.pop(
        "ac_stages.layer_list.0.1.performer_attention.to_q.bias")
    state["final_bn.weight"] = state["final_bn.weight"].reshape(16, 16)
    torch.save(state, tmp_path / "mismatched.pth")
    with pytest.raises(HiresError) as err:
        import_checkpoint(tmp_path / "mismatched.pth")
    message = str(err.value)
    assert "\n" not in message and f"{tmp_path / 'mismatched.pth'} does not match hct_base" in message
    assert ("2 missing tensors (conv_stages.layer_list.1.0.conv2.weight, "
            "ac_stages.layer_list.0.1.performer_attention.to_q.bias)") in message
    assert ("2 unexpected tensors (conv_stages.layer_list.1.0.conv_2.weight, "
            "ac_stages.layer_list.0.1.performer_attention.to_query.bias)") in message
    assert "first shape mismatch: final_bn.weight is (16, 16) in the file but hct_base expects (256,)" in message


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    data = HCT.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(HiresError, match=r"truncated\.pth is not a readable PyTorch checkpoint .*it may be "
                                         "truncated: download it again"):
        import_checkpoint(tmp_path / "truncated.pth")


def test_a_pickle_payload_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"state_dict": torch.load(HCT, weights_only=True), "hook": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(HiresError, match="refusing to load .*evil.pth: it holds pickled objects other than tensors"):
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_napari_hires_import_writes_a_model_file_whose_card_says_what_it_is(tmp_path, capsys):
    out = tmp_path / "hct.safetensors"
    assert cli.main(["import", str(HCT), "--out", str(out)]) == 0
    assert "hct_base" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["provenance"]["imported_from"]["name"] == "hct_base"
    assert card["provenance"]["imported_from"]["code"] == "whiterabbit-ai/hct HCTBase"
    assert (card["task"], card["out_channels"]) == ("classification", 2)
    assert card["normalization"]["mean"] == [0.0] and card["normalization"]["std"] == [1.0]
    assert (card["input_multiple"], card["tile_size"], card["halo"]) == (1, 512, 128)


def test_napari_hires_import_refuses_an_existing_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "hct.safetensors"
    assert cli.main(["import", str(HCT), "--out", str(out)]) == 0
    written = out.read_bytes()
    assert cli.main(["import", str(HCT), "--out", str(out)]) == 2
    assert "already exists; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == written
    assert cli.main(["import", str(HCT), "--out", str(out), "--overwrite"]) == 0


def test_an_unknown_architecture_lists_the_importable_ones(capsys, tmp_path):
    assert cli.main(["import", str(HCT), "--architecture", "resnet50", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "no importer for architecture 'resnet50'; napari-hires imports" in err
    assert all(name in err for name in ("hct*", "maxvit_*", "xt_*")), err
    assert not (tmp_path / "m.safetensors").exists()


def test_the_refusal_names_the_pickled_object_in_one_plain_line(tmp_path):
    """What the file holds (``io.open``), not torch's advice to load it with weights_only=False, nor its escapes."""
    torch.save({"hook": Payload(tmp_path / "ran")}, tmp_path / "evil.pth")
    with pytest.raises(HiresError) as err:
        read_checkpoint(tmp_path / "evil.pth")
    message = str(err.value)
    assert "pickled objects other than tensors (io.open)" in message
    assert "\n" not in message and "\x1b" not in message and "weights_only" not in message
