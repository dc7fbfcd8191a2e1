"""MAXIM against the SPEC's unit checks: parameter counts of the official Flax model, MACs, output structure,
padding, rearranges, gating, loss, and registry overrides."""

import pytest
import torch

from napari_hires.errors import HiresError
from napari_hires.models import count_parameters, create_model, list_models
from napari_hires.models.layers import count_macs
from napari_hires.models.maxim import MAXIM, MAXIMConfig, maxim_loss
from napari_hires.models.maxim_blocks import (
    RCAB,
    RDCAB,
    SAM,
    BottleneckBlock,
    CrossGatingBlock,
    GatingUnit,
    MultiAxisGmlp,
    SpatialGatingWeights,
    block_images,
    unblock_images,
)


def _meta_model(name: str, **overrides) -> MAXIM:
    with torch.device("meta"):
        return create_model(name, **overrides)


@pytest.fixture(scope="module")
def s3() -> MAXIM:
    """The published S-3 on the meta device (shapes and counts only)."""
    return _meta_model("maxim_3s")


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("maxim_3s", {"num_supervision_scales": 1}, 20_599_145),
        ("maxim_2s", {}, 14_176_178),  # S-2 (README 14.1M)
        ("maxim_3s", {"num_stages": 1, "num_supervision_scales": 1}, 6_108_515),  # S-1
        ("maxim_3s", {"features": 64}, 66_991_707),  # M-3
    ],
)
def test_parameter_counts_match_official_flax(name, overrides, expected):
    assert count_parameters(_meta_model(name, **overrides)) == expected


def test_published_s3(s3):
    assert count_parameters(s3) == 22_212_795  # S-3, three supervision scales (README 22.2M)
    assert (s3.task, s3.in_channels, s3.out_channels, s3.input_multiple) == ("restoration", 3, 3, 64)


def test_registry_and_small_model():
    assert {"maxim_3s", "maxim_2s", "maxim_nano"} <= set(list_models("maxim*", task="restoration"))
    nano = _meta_model("maxim_nano")
    assert count_parameters(nano) < 1_500_000
    assert nano.describe()["task"] == "restoration"
    assert nano.out_channels == nano.in_channels == 3
    assert nano.halo >= 32


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: MultiAxisGmlp(32, 16, 16), 142_432),
        (lambda: MultiAxisGmlp(128, 8, 8), 174_592),
        (lambda: RCAB(32), 19_112),
        (lambda: RDCAB(128), 41_632),
        (lambda: CrossGatingBlock(32, 32, 32, 16, 16, upsample_y=False), 278_144),
        (lambda: SAM(32), 11_011),
        (lambda: BottleneckBlock(128, 128, 8, 8), 448_960),
    ],
)
def test_submodule_parameter_counts(build, expected):
    with torch.device("meta"):
        assert count_parameters(build()) == expected


def test_macs_at_256_and_scaling_to_512(s3):
    model = s3
    with torch.device("meta"):
        macs_256 = count_macs(model, torch.zeros(1, 3, 256, 256))
        macs_512 = count_macs(model, torch.zeros(1, 3, 512, 512))
    # SPEC: torch flop counter on the same layout gives 152.1 G -> 608.5 G; XLA's 341 GFLOPs also counts
    # elementwise ops and resize einsums, so 2 x MACs stays below it
    assert macs_256 == pytest.approx(152.1e9, rel=0.03)
    assert 2 * macs_256 < 341e9
    assert macs_512 / macs_256 == pytest.approx(4.0, rel=0.01)


def test_outputs_per_stage_and_scale_at_256(s3):
    with torch.device("meta"), torch.no_grad():
        outputs = s3.forward_all(torch.zeros(2, 3, 256, 256))
    assert [[tuple(o.shape) for o in stage] for stage in outputs] == [
        [(2, 3, 64, 64), (2, 3, 128, 128), (2, 3, 256, 256)]
    ] * 3


def test_single_supervision_scale_gives_one_output_per_stage():
    model = _meta_model("maxim_2s", num_supervision_scales=1)
    with torch.device("meta"), torch.no_grad():
        outputs = model.forward_all(torch.zeros(1, 3, 128, 128))
    assert [[tuple(o.shape) for o in stage] for stage in outputs] == [[(1, 3, 128, 128)]] * 2


def test_input_multiple_is_the_true_partition_rule():
    model = _meta_model("maxim_3s", num_stages=1)  # same block / grid sizes per level as S-3, fewer ops
    assert model.input_multiple == 64
    with torch.device("meta"), torch.no_grad():
        model.forward_padded(torch.zeros(1, 3, 64, 128))  # every block / grid partition is exact
        with pytest.raises(ValueError, match="divisible"):
            model.forward_padded(torch.zeros(1, 3, 96, 96))  # bottleneck at 12 x 12 cannot hold 8 x 8 blocks
    assert MAXIMConfig(block_size_lr=4, grid_size_lr=4).input_multiple == 32
    assert MAXIMConfig(block_size_hr=8, grid_size_hr=4, block_size_lr=4, grid_size_lr=2).input_multiple == 32


def test_non_multiple_input_is_padded_and_cropped_back(s3):
    torch.manual_seed(0)
    model = create_model("maxim_nano").eval()
    x = torch.rand(1, 3, 100, 150)  # reflect-padded to 128 x 192
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    with torch.device("meta"), torch.no_grad():
        outputs = s3.forward_all(torch.zeros(1, 3, 100, 150))
    assert [tuple(o.shape[-2:]) for o in outputs[-1]] == [(25, 38), (50, 75), (100, 150)]


def test_block_and_grid_rearranges_round_trip():
    x = torch.randn(2, 32, 48, 5)
    blocks = block_images(x, 8, 16)
    assert blocks.shape == (2, 4 * 3, 8 * 16, 5)
    torch.testing.assert_close(blocks[:, 1].reshape(2, 8, 16, 5), x[:, :8, 16:32], rtol=0, atol=0)
    assert torch.equal(unblock_images(blocks, 4, 3, 8, 16), x)
    # grid view: 8 x 8 grid of patches 4 x 6; token t of every patch is pixel t of its patch
    grid = block_images(x, 32 // 8, 48 // 8)
    assert torch.equal(grid[:, :, 0], x[:, ::4, ::6].reshape(2, 64, 5))
    assert torch.equal(unblock_images(grid, 8, 8, 4, 6), x)


@pytest.mark.parametrize("axis", [-3, -2])
def test_zeroed_gating_dense_makes_the_gate_the_identity(axis):
    unit = GatingUnit(channels=8, tokens=16, axis=axis)
    with torch.no_grad():
        unit.spatial.weight.zero_()
        unit.spatial.bias.zero_()
    x = torch.randn(2, 16, 16, 8)
    torch.testing.assert_close(unit(x), x[..., :4])


def test_cross_gating_spatial_layers_start_with_bias_one():
    gate = SpatialGatingWeights(16, block_size=4, grid_size=2)
    for layer in (gate.grid_mix, gate.block_mix):
        assert torch.equal(layer.bias, torch.ones_like(layer.bias))
        assert 0 < layer.weight.std() < 0.05
    with torch.no_grad():
        gate.grid_mix.weight.zero_()
        gate.block_mix.weight.zero_()
    # with zeroed spatial kernels the gating weights are the bias alone: the same at every pixel, for any input
    g1, g2 = gate(torch.randn(1, 8, 8, 16)), gate(torch.randn(1, 8, 8, 16))
    torch.testing.assert_close(g1, g2)
    torch.testing.assert_close(g1, g1[:, :1, :1].expand_as(g1))


def test_loss_is_charbonnier_floor_for_perfect_outputs_and_trains():
    target = torch.rand(1, 3, 64, 64)
    sizes = (16, 32, 64)
    perfect = [
        [torch.nn.functional.interpolate(target, size=(s, s), mode="bilinear", antialias=True) for s in sizes]
        for _ in range(2)
    ]
    assert float(maxim_loss(perfect, target)) == pytest.approx(6 * 1e-3, rel=1e-3)

    torch.manual_seed(0)
    model = create_model("maxim_nano")
    loss = maxim_loss(model.forward_all(target), target)
    assert loss.item() > 6 * 1e-3
    loss.backward()
    assert model.stages[0].input_convs[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="target"):
        maxim_loss(perfect, target[..., :32, :32])


def test_create_model_overrides():
    torch.manual_seed(0)
    gray = create_model("maxim_nano", in_channels=1).eval()
    assert gray.in_channels == gray.out_channels == 1
    with torch.no_grad():
        assert gray(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    assert create_model("maxim_3s", num_stages=1).config.num_stages == 1
    with pytest.raises(HiresError, match="num_classes"):
        create_model("maxim_nano", num_classes=4)
    with pytest.raises(HiresError, match="num_supervision_scales"):
        create_model("maxim_nano", num_supervision_scales=4)


def test_activation_memory_grows_linearly_with_pixels():
    def saved_bytes(h: int, w: int) -> int:
        seen, total = set(), 0

        def pack(t):
            nonlocal total
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.rand(1, 3, h, w, requires_grad=True))
        return total

    torch.manual_seed(0)
    model = create_model("maxim_nano")
    assert saved_bytes(128, 128) / saved_bytes(64, 128) == pytest.approx(2.0, rel=0.1)
