"""MAXIM's official Flax checkpoints imported through the product's own converter: the reference fixture's outputs
reproduced, the configuration read from the file, the card, the files refused, and the imported model run by
``predict`` and the live preview like any model."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_hires.errors import HiresError
from napari_hires.models.checkpoints import Checkpoint
from napari_hires.models.importers import import_checkpoint
from reference import REFERENCE

CHECKPOINT = REFERENCE / "maxim_official.npz"
TOLERANCE = 1e-5  # rel = max|ref - got| / max|ref|, float32 on a CPU (the README measured <= 3.4e-6)


def rel(ref: np.ndarray, got: torch.Tensor) -> float:
    """Relative difference of an NCHW output to an NHWC reference."""
    return float(np.abs(ref - got.permute(0, 2, 3, 1).numpy()).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def official() -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """The fixture's input (NCHW) and the official Flax model's 9 outputs (NHWC) by name."""
    x = torch.from_numpy(np.load(REFERENCE / "maxim_input.npy", allow_pickle=False)).permute(0, 3, 1, 2)
    with np.load(REFERENCE / "maxim_output.npz", allow_pickle=False) as outputs:
        return x, {k: outputs[k] for k in outputs.files}


@pytest.fixture(scope="module")
def imported():
    return import_checkpoint(CHECKPOINT)


def test_fixture_reproduces_every_official_output(imported, official):
    x, ref = official
    with torch.no_grad():
        outputs = imported.forward_all(x)
    got = {f"outputs_{s}_{k}": out for s, stage in enumerate(outputs) for k, out in enumerate(stage)}
    assert sorted(got) == sorted(ref)
    worst = {name: rel(ref[name], got[name]) for name in ref}
    assert max(worst.values()) <= TOLERANCE, worst


def test_prediction_is_the_last_stages_full_resolution_output(imported, official):
    x, ref = official
    with torch.no_grad():
        assert rel(ref["outputs_2_2"], imported(x)) <= TOLERANCE  # run_eval's prediction: outputs[-1][-1]


def test_configuration_is_read_from_the_file(imported):
    c = imported.config
    assert (c.features, c.num_stages, c.depth, c.num_groups, c.num_bottleneck_blocks) == (8, 3, 3, 2, 2)
    assert (c.block_size_hr, c.grid_size_hr, c.block_size_lr, c.grid_size_lr) == (8, 4, 4, 4)
    assert (c.input_proj_factor, c.block_gmlp_factor, c.grid_gmlp_factor, c.channels_reduction) == (2, 2, 2, 4)
    assert (c.num_supervision_scales, c.in_channels) == (3, 3)
    assert imported.card.architecture == "maxim_3s"
    assert imported.card.overrides == {"features": 8, "block_size_hr": 8, "grid_size_hr": 4, "block_size_lr": 4,
                                       "grid_size_lr": 4, "halo": 32}


def two_stage_file(path: Path) -> Path:
    """The fixture cut to its first two stages in the official layout: stage 2 and its 18 UpSampleRatio modules
    dropped, and stage 1's SAM image convs made its output convs (a last stage's head, of the same shape)."""
    tensors = {}
    with np.load(CHECKPOINT, allow_pickle=False) as archive:
        for key in archive.files:
            name = key[len("opt/target/"):]
            upsample = re.match(r"UpSampleRatio_(\d+)/", name)
            if name.startswith("stage_2_") or (upsample and int(upsample[1]) >= 36):
                continue
            sam = re.match(r"stage_1_supervised_attention_module_(\d)/(Conv_\d)/(\w+)$", name)
            if sam and sam[2] != "Conv_1":
                continue
            tensors[f"opt/target/stage_1_output_conv_{sam[1]}/{sam[3]}" if sam else key] = archive[key]
    np.savez(path, **tensors)
    return path


def test_a_two_stage_file_imports_as_two_stages_with_their_official_outputs(tmp_path, official):
    x, ref = official
    model = import_checkpoint(two_stage_file(tmp_path / "two_stages.npz"))
    assert model.config.num_stages == 2 and model.card.architecture == "maxim_2s"
    with torch.no_grad():
        outputs = model.forward_all(x)
    # the first two stages do not depend on the third: their restorations are the official ones
    assert max(rel(ref[f"outputs_{s}_{k}"], outputs[s][k]) for s in range(2) for k in range(3)) <= TOLERANCE


def test_card_names_the_source_and_the_official_preprocessing(imported):
    card = imported.card
    assert card.task == "restoration" and card.in_channels == card.out_channels == 3
    assert (card.normalization.scale, card.normalization.mean, card.normalization.std) == (
        1 / 255, [0.0] * 3, [1.0] * 3)  # run_eval divides 8-bit images by 255 and nothing else
    assert (card.input_multiple, card.halo, card.tile_size) == (32, 32, 512)
    source = card.provenance["imported_from"]
    assert source["code"].startswith("google-research/maxim custom (3 stages, features 8")
    assert (source["name"], source["task"], source["dataset"], source["format"]) == ("maxim", "unknown", "unknown",
                                                                                     "npz")
    assert "does not say" in card.description


def test_architecture_names_the_task_for_the_card():
    card = import_checkpoint(CHECKPOINT, "maxim_denoising").card
    source = card.provenance["imported_from"]
    assert (source["name"], source["task"], source["dataset"]) == ("maxim_denoising", "Denoising", "unknown")
    assert "for denoising" in card.description


def test_a_released_checkpoints_name_checks_its_variant():
    with pytest.raises(HiresError, match=r"not the released MAXIM S-3 Denoising checkpoint for SIDD.*maxim_denoising"):
        import_checkpoint(CHECKPOINT, "maxim_denoising_sidd")  # the release is S-3 with features 32


def flax_layout(model) -> Checkpoint:
    """A checkpoint holding ``model``'s tensors under the official names and in Flax's kernel layouts (shapes only,
    for a model on the meta device)."""
    from torch import nn

    from napari_hires.models.published.maxim import tensor_map

    state, tensors = model.state_dict(), {}
    for ours, theirs in tensor_map(model).sources.items():
        t, module = state[ours], model.get_submodule(ours.rpartition(".")[0])
        if ours.endswith(".weight") and isinstance(module, nn.Linear):
            t = t.T
        elif ours.endswith(".weight") and isinstance(module, nn.ConvTranspose2d):
            t = t.flip(2, 3).permute(2, 3, 0, 1)
        elif ours.endswith(".weight") and isinstance(module, nn.Conv2d):
            t = t.permute(2, 3, 1, 0)
        tensors[theirs] = t
    return Checkpoint(Path("checkpoint.npz"), tensors, "npz")


def test_a_released_configuration_is_named_as_released():
    from napari_hires.models import create_model
    from napari_hires.models.published.maxim import convert

    with torch.device("meta"):
        layout = flax_layout(create_model("maxim_2s"))
    conversion = convert(layout, "maxim_deraining_rain13k")
    assert conversion.source == {"name": "maxim_deraining_rain13k", "code": "google-research/maxim S-2",
                                 "task": "Deraining", "dataset": "Rain13k"}
    assert conversion.model.overrides == {} and conversion.model.input_multiple == 64
    with pytest.raises(HiresError, match="not the released MAXIM S-3 Deblurring checkpoint for GoPro: it is S-2"):
        convert(layout, "maxim_deblurring_gopro")


def test_an_unknown_maxim_name_lists_the_known_ones():
    with pytest.raises(HiresError, match=r"no importer for architecture 'maxim_denoise'.*maxim_deblurring_gopro"):
        import_checkpoint(CHECKPOINT, "maxim_denoise")


def test_the_imported_model_file_reloads_as_the_same_model(tmp_path, official, capsys):
    from napari_hires.cli.main import main
    from napari_hires.models import load_model

    assert main(["import", str(CHECKPOINT), "--architecture", "maxim_deraining", "--out", str(tmp_path / "m")]) == 0
    assert "as maxim_3s (restoration, 3 channels" in capsys.readouterr().out
    model = load_model(tmp_path / "m.safetensors")
    assert model.card.provenance["imported_from"]["task"] == "Deraining" and model.halo == 32
    with torch.no_grad():
        assert rel(official[1]["outputs_2_2"], model(official[0])) <= TOLERANCE


def test_a_truncated_checkpoint_gets_a_clear_error(tmp_path):
    cut = tmp_path / "checkpoint.npz"
    data = CHECKPOINT.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(HiresError, match=r"not a readable \.npz archive.*download it again"):
        import_checkpoint(cut)


class _Trap:
    """Unpickling it makes a directory: evidence that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_an_object_array_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "checkpoint.npz"
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(marker)
    np.savez(path, **{"opt/target/stage_0_input_conv_0/kernel": trap})
    pickle.loads(pickle.dumps(_Trap(tmp_path / "armed")))  # the trap works: unpickling it runs os.mkdir
    assert (tmp_path / "armed").is_dir()
    with pytest.raises(HiresError, match="refusing to read .* pickled objects"):
        import_checkpoint(path)
    assert not marker.exists()


@pytest.fixture
def input_store(tmp_path, official) -> str:
    """The fixture's input image (RGB floats in 0..1) as an OME-Zarr store."""
    import dask.array as da

    from napari_hires.io.ome_zarr_writer import write_ome_zarr
    from napari_hires.io.pyramid import Pyramid

    image = official[0][0].permute(1, 2, 0).numpy()
    return write_ome_zarr(Pyramid([da.from_array(image)], "yxc", (1.0,) * 3, (0.0,) * 3, name="input"),
                          tmp_path / "input.zarr", chunk=64)


def test_predict_with_the_checkpoint_gives_the_official_prediction(input_store, official, tmp_path):
    from napari_hires.engine import predict
    from napari_hires.io.readers import open_image

    result = predict(input_store, str(CHECKPOINT), tmp_path / "restored.zarr", device="cpu")
    assert result.task == "restoration" and result.tiles == 1  # the image is smaller than one 512 px tile
    restored = open_image(tmp_path / "restored.zarr").levels[0].compute()
    assert restored.dtype == np.float32
    ref = official[1]["outputs_2_2"]
    assert np.abs(np.moveaxis(restored, 0, -1)[None] - ref).max() / np.abs(ref).max() <= TOLERANCE


def test_live_preview_shows_the_official_prediction(make_napari_viewer, qtbot, official):
    from napari_hires.widgets.preview import MODEL_FILE, PREVIEW_LAYER, RestorationPreviewWidget

    viewer = make_napari_viewer(show=True)
    viewer.add_image(official[0][0].permute(1, 2, 0).numpy(), rgb=True, name="input")
    widget = RestorationPreviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.window.resize(1100, 700)
    camera = getattr(viewer, "scene", viewer).camera  # napari 0.9 keeps the camera in viewer.scene
    camera.center, camera.zoom = (64, 80), 1.0  # the whole 128 x 160 image in view
    widget.model.value = MODEL_FILE
    widget.model_file.value = CHECKPOINT
    widget.device.value = "cpu"
    widget.live.value = True
    try:

        def drawn() -> bool:
            f = widget.future
            return (f is not None and f.done() and not f.cancelled() and widget.result is f.result()
                    and widget.latency_ms is not None)

        qtbot.waitUntil(drawn, timeout=60_000)
        assert widget.result.box.shape == (128, 160)  # the whole image is in view
        shown = np.asarray(viewer.layers[PREVIEW_LAYER].data)
        ref = official[1]["outputs_2_2"][0]
        assert np.abs(shown - ref).max() / np.abs(ref).max() <= TOLERANCE, widget.status.value
    finally:
        widget.close()
