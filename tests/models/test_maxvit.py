"""MaxViT: published sizes and cost, partition geometry, relative bias, padding contract, scaling, registry."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models import count_parameters, create_model, list_models, model_entry
from napari_hires.models.layers import count_macs
from napari_hires.models.maxvit import (
    MaxViTBackbone,
    MaxViTConfig,
    RelativePositionBias,
    block_partition,
    block_unpartition,
    grid_partition,
    grid_unpartition,
)

NAMES = ["maxvit_nano_cls", "maxvit_nano_seg", "maxvit_tiny", "maxvit_tiny_p8", "maxvit_tiny_seg"]


def _meta(name: str, **overrides) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **overrides)


def _coords(b: int, h: int, w: int) -> torch.Tensor:
    """(B, H, W, 3) map whose channels are (batch, row, column) of each pixel."""
    bb, rr, cc = torch.meshgrid(torch.arange(b), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([bb, rr, cc], dim=-1)


def test_registry_lists_published_and_small_models():
    assert set(NAMES) <= set(list_models("maxvit*"))
    assert model_entry("maxvit_tiny").published and model_entry("maxvit_tiny").task == "classification"
    assert model_entry("maxvit_nano_seg").task == "segmentation"
    for name in ("maxvit_nano_seg", "maxvit_nano_cls"):
        assert count_parameters(_meta(name)) < 1_000_000


def test_maxvit_tiny_parameters_match_the_official_model():
    model = _meta("maxvit_tiny")
    assert count_parameters(model) == pytest.approx(30_916_528, rel=0.005)
    bb = model.backbone
    stages = [count_parameters(s) for s in bb.stages]
    assert count_parameters(bb.stem) == 38_848
    assert stages == pytest.approx([290_792, 1_114_064, 11_165_456, 17_530_688], rel=0.005)
    assert count_parameters(model.head) == 776_680
    # only the classifier differs between 1000 and 5 classes
    assert count_parameters(model) - count_parameters(_meta("maxvit_tiny", num_classes=5)) == 512 * 995 + 995
    assert count_parameters(_meta("maxvit_tiny_p8")) == pytest.approx(30_925_936, rel=0.005)


def test_maxvit_tiny_macs_and_linear_scaling():
    model = _meta("maxvit_tiny")
    with torch.device("meta"):
        macs_224 = count_macs(model, torch.empty(1, 3, 224, 224))
        macs_448 = count_macs(model, torch.empty(1, 3, 448, 448))
    assert macs_224 == pytest.approx(5.55e9, rel=0.03)
    assert macs_448 / macs_224 == pytest.approx(4.0, rel=0.02)


def test_stage_shapes_at_224():
    model = _meta("maxvit_tiny")
    with torch.device("meta"):
        feats = model.backbone.forward_features(torch.empty(2, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 112, 112), (64, 56, 56), (128, 28, 28), (256, 14, 14),
                                                   (512, 7, 7)]
    assert model.backbone.feature_strides == [2, 4, 8, 16, 32]
    assert model.backbone.feature_channels == [64, 64, 128, 256, 512]


def test_partitions_round_trip_exactly():
    x = torch.randn(2, 16, 24, 5)
    for part, unpart in ((block_partition, block_unpartition), (grid_partition, grid_unpartition)):
        windows = part(x, 4)
        assert windows.shape == (2 * 4 * 6, 16, 5)
        assert torch.equal(unpart(windows, 4, 16, 24), x)


def test_block_windows_are_contiguous_and_grid_windows_are_dilated():
    b, h, w, size = 2, 16, 24, 4
    pix = _coords(b, h, w)
    blocks = block_partition(pix, size).reshape(b, h // size, w // size, size, size, 3)
    grids = grid_partition(pix, size).reshape(b, h // size, w // size, size, size, 3)
    for n, p, q, a, c in [(0, 0, 0, 0, 0), (1, 2, 5, 3, 1), (0, 3, 1, 2, 3), (1, 1, 4, 1, 2)]:
        assert blocks[n, p, q, a, c].tolist() == [n, p * size + a, q * size + c]
        # token (a, c) of grid window (p, q) is pixel (a * H/G + p, c * W/G + q): H/G and W/G apart
        assert grids[n, p, q, a, c].tolist() == [n, a * (h // size) + p, c * (w // size) + q]


def test_relative_bias_is_toeplitz_in_the_offsets():
    size = 4
    rel = RelativePositionBias(heads=3, size=size)
    bias = rel().detach()
    assert bias.shape == (3, size * size, size * size)
    table = rel.table.detach()
    for i in range(size):
        for j in range(size):
            for x in range(size):
                for y in range(size):
                    expected = table[:, x - i + size - 1, y - j + size - 1]
                    assert torch.equal(bias[:, i * size + j, x * size + y], expected)
    assert "index" not in rel.state_dict()  # derived, not saved


def test_sizes_not_a_multiple_of_32p_raise_but_the_model_pads_any_size():
    seg = create_model("maxvit_nano_seg").eval()
    assert seg.input_multiple == 256
    with pytest.raises(HiresError, match="multiples of 256"):
        seg.forward_padded(torch.zeros(1, 3, 256, 300))
    with pytest.raises(HiresError, match="multiples of 256"):
        seg.backbone.forward_features(torch.zeros(1, 3, 128, 256))
    with torch.no_grad():
        assert seg(torch.randn(1, 3, 180, 230)).shape == (1, 4, 180, 230)
        cls = create_model("maxvit_nano_cls").eval()
        assert cls(torch.randn(2, 3, 180, 230)).shape == (2, 2)


def test_activation_memory_grows_linearly_with_pixels():
    torch.manual_seed(0)
    model = create_model("maxvit_nano_seg", window_size=4).eval()

    def saved_bytes(h: int, w: int) -> int:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(1, 3, h, w, requires_grad=True))
        return sum(seen.values())

    assert saved_bytes(128, 256) / saved_bytes(128, 128) == pytest.approx(2.0, rel=0.1)


def test_training_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = create_model("maxvit_nano_seg", num_classes=3, window_size=4, drop_path_rate=0.0).train()
    logits = model(torch.randn(2, 3, 128, 128))
    nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 128, 128))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_create_model_overrides_channels_classes_and_window():
    model = create_model("maxvit_nano_seg", in_channels=1, num_classes=7, window_size=4).eval()
    assert (model.in_channels, model.out_channels, model.input_multiple) == (1, 7, 128)
    assert model.backbone.stages[0][0].block_attn.attn.bias.table.shape[-2:] == (7, 7)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 128, 256)).shape == (1, 7, 128, 256)
    tiny = _meta("maxvit_tiny", window_size=12)
    assert tiny.input_multiple == 384 and tiny.halo == 0
    assert count_parameters(tiny) == pytest.approx(30_977_008, rel=0.005)
    with pytest.raises(HiresError, match="window_sise"):
        create_model("maxvit_nano_cls", window_sise=4)
    with pytest.raises(HiresError, match="head_size"):
        create_model("maxvit_nano_cls", widths=(32, 48, 64, 100))


def test_config_contract_stochastic_depth_and_init():
    model = create_model("maxvit_nano_cls", depths=(1, 2, 1, 1))
    rates = [blk.mbconv.drop_path.p for stage in model.backbone.stages for blk in stage]
    assert rates == pytest.approx([0.1 * b / 5 for b in range(5)])
    json.dumps(model.describe())
    assert model.describe()["config"]["window_size"] == 8
    seg = create_model("maxvit_nano_seg")
    assert seg.receptive_field == 256 and 0 < seg.halo < seg.input_multiple
    linears = [m for m in model.backbone.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert all(m.bias is None or not m.bias.any() for m in linears)
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)


def test_backbone_strides_match_the_maps_it_returns():
    backbone = MaxViTBackbone(MaxViTConfig(stem_width=8, depths=(1, 1, 1, 1), widths=(16, 16, 32, 32), head_size=16,
                                           window_size=2, out_indices=(1, 3, 4))).eval()
    with torch.no_grad():
        feats = backbone.forward_features(torch.randn(1, 3, 128, 192))
    assert [f.shape[1] for f in feats] == backbone.feature_channels == [16, 32, 32]
    assert [128 // f.shape[2] for f in feats] == [192 // f.shape[3] for f in feats] == backbone.feature_strides


def _stride2_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]


@pytest.mark.parametrize("size", [(64, 96), (65, 97)])
def test_published_maxvit_pads_stride_2_convs_as_tensorflow_same(size):
    """TF "SAME": the odd pixel of padding goes to the bottom/right (even sizes pad 0 top/left, 1 bottom/right)."""
    model = create_model("maxvit_nano_cls").eval()
    assert model.config.padding == "same"
    convs = _stride2_convs(model.backbone)
    assert len(convs) == 5  # the stem's first conv and each stage's opening depthwise conv
    x = torch.randn(1, 3, *size)
    h, w = size
    pad_h, pad_w = max((-(-h // 2) - 1) * 2 + 3 - h, 0), max((-(-w // 2) - 1) * 2 + 3 - w, 0)
    stem = convs[0]
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)),
        stem.weight, stem.bias, stride=2)
    with torch.no_grad():
        assert torch.equal(stem(x), expected)


def test_symmetric_padding_is_a_named_option():
    model = create_model("maxvit_nano_cls", padding="symmetric").eval()
    stem = _stride2_convs(model.backbone)[0]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(stem(x), torch.nn.functional.conv2d(x, stem.weight, stem.bias, stride=2, padding=1))
    with pytest.raises(HiresError, match="padding"):
        create_model("maxvit_nano_cls", padding="valid")


def test_shipped_maxvit_weights_say_they_were_trained_with_symmetric_padding():
    seg = create_model("maxvit_nano_seg.synthetic")
    assert seg.card.overrides["padding"] == "symmetric" and seg.config.padding == "symmetric"
    xt = create_model("xt_nano_seg.synthetic")
    assert xt.card.overrides["region_encoder_args"]["padding"] == "symmetric"
