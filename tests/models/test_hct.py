"""HCT and its FAVOR+ attention against SPEC.md section 1: sizes, costs, the linear-attention maths and memory."""

from __future__ import annotations

import pytest
import torch

from napari_hires.errors import HiresError
from napari_hires.models import count_parameters, create_model, list_models, load_model, save_model
from napari_hires.models.hct import HCTBackbone, HCTConfig
from napari_hires.models.layers import count_macs
from napari_hires.models.performer import (
    PerformerAttention,
    exact_attention,
    gaussian_orthogonal_matrix,
    linear_attention,
    relu_features,
    softmax_features,
)


def _params(modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _saved_bytes(fn, *inputs: torch.Tensor) -> int:
    """Activation bytes: distinct storages autograd saves for backward in ``fn(*inputs)``, weights excluded."""
    weights = {p.untyped_storage().data_ptr() for p in fn.parameters()} if isinstance(fn, torch.nn.Module) else set()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(seen.values())


def test_registered_names():
    assert {"hct_base", "hct_base_seg", "hct_tiny_seg", "hct_tiny_cls"} <= set(list_models("hct*"))
    assert set(list_models("hct*", task="segmentation")) >= {"hct_base_seg", "hct_tiny_seg"}


def test_published_parameter_counts_and_projection_buffers():
    model = create_model("hct_base")
    backbone = model.backbone
    assert abs(count_parameters(model) - 1_737_010) <= 0.005 * 1_737_010
    assert abs(_params([backbone.stem, *backbone.stages[:3]]) - 174_896) <= 0.005 * 174_896
    assert abs(_params(backbone.stages[3:]) - 1_561_088) <= 0.005 * 1_561_088
    projections = {k: v for k, v in model.state_dict().items() if k.endswith("projection")}
    assert [tuple(v.shape) for v in projections.values()] == [(16, 8), (44, 16), (44, 16), (110, 32)]
    for w in projections.values():  # ortho_scaling=1: rows of norm sqrt(d), orthogonal within a block
        d = w.shape[1]
        torch.testing.assert_close(w.norm(dim=1), torch.full((w.shape[0],), d**0.5))
        torch.testing.assert_close(w[:d] @ w[:d].T, d * torch.eye(d), atol=1e-4, rtol=0)


def test_published_shapes_and_macs_at_mammogram_size():
    with torch.device("meta"):
        model = create_model("hct_base").eval()
        big = torch.empty(2, 1, 3328, 2560)
        assert model(big).shape == (2, 2)
        assert model.backbone.forward_features(big)[-1].shape == (2, 256, 26, 20)
        assert abs(count_macs(model, big[:1]) - 6.80e9) <= 0.03 * 6.80e9
        assert abs(count_macs(model, torch.empty(1, 1, 512, 512)) - 0.209e9) <= 0.03 * 0.209e9


def test_small_models_are_small_rgb_and_classify_real_tiles():
    for name in ("hct_tiny_seg", "hct_tiny_cls"):
        model = create_model(name)
        assert model.in_channels == 3 and count_parameters(model) < 1_000_000
    out = create_model("hct_tiny_cls").eval()(torch.randn(2, 3, 200, 333))
    assert out.shape == (2, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize("kernel", ["relu", "softmax"])
def test_linear_path_equals_row_normalised_quadratic_form(kernel):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 50, 16, dtype=torch.float64)
    w = gaussian_orthogonal_matrix(44, 16).double()
    if kernel == "relu":
        phi_q, phi_k = relu_features(q, w), relu_features(k, w)
    else:
        phi_q, phi_k = softmax_features(q, w, is_query=True), softmax_features(k, w, is_query=False)
    scores = phi_q @ phi_k.transpose(-1, -2)
    quadratic = (scores / scores.sum(dim=-1, keepdim=True)) @ v
    torch.testing.assert_close(linear_attention(phi_q, phi_k, v), quadratic, atol=1e-5, rtol=1e-5)


def test_softmax_kernel_error_shrinks_as_features_grow():
    d, n = 16, 64
    errors = []
    for m in (16, 64, 256, 1024):
        trial_errors = []
        for seed in range(5):
            gen = torch.Generator().manual_seed(seed)
            q, k, v = torch.randn(3, 1, 2, n, d, generator=gen) * 0.5
            w = gaussian_orthogonal_matrix(m, d, generator=gen)
            approx = linear_attention(softmax_features(q, w, is_query=True), softmax_features(k, w, is_query=False), v)
            trial_errors.append((approx - exact_attention(q, k, v)).abs().mean().item())
        errors.append(sum(trial_errors) / len(trial_errors))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 3


def test_permuting_tokens_permutes_the_output():
    torch.manual_seed(0)
    for kernel in ("relu", "softmax"):
        attention = PerformerAttention(32, 8, kernel=kernel).eval()
        x = torch.randn(2, 77, 32)
        perm = torch.randperm(77)
        torch.testing.assert_close(attention(x[:, perm]), attention(x)[:, perm], atol=1e-5, rtol=1e-5)


def test_projection_is_fixed_through_training_and_kept_in_model_files(tmp_path):
    torch.manual_seed(0)
    model = create_model("hct_tiny_cls", in_channels=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 96, 96)), torch.tensor([0, 1, 0, 1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    projections = [k for k in after if k.endswith("projection")]
    assert projections and all(torch.equal(before[k], after[k]) for k in projections)
    assert not torch.equal(before["head.classifier.weight"], after["head.classifier.weight"])
    assert not any(k.endswith("projection") for k, _ in model.named_parameters())

    save_model(model.eval(), tmp_path / "hct")
    loaded = load_model(tmp_path / "hct")
    assert all(torch.equal(loaded.state_dict()[k], after[k]) for k in projections)
    x = torch.randn(1, 1, 96, 96)
    torch.testing.assert_close(loaded(x), model(x))


def test_activation_memory_is_linear_in_pixels_unlike_exact_attention():
    torch.manual_seed(0)
    model = create_model("hct_base").eval()
    small = _saved_bytes(model, torch.randn(1, 1, 256, 256))
    large = _saved_bytes(model, torch.randn(1, 1, 256, 512))
    assert 1.5 < large / small < 2.5

    attention = PerformerAttention(64, 8).eval()
    linear = [_saved_bytes(attention, torch.randn(1, n, 64)) for n in (1024, 2048)]
    assert linear[1] / linear[0] < 2.5
    qkv = [torch.randn(3, 1, 8, n, 8, requires_grad=True) for n in (1024, 2048)]
    quadratic = [_saved_bytes(exact_attention, *t) for t in qkv]
    assert quadratic[1] / quadratic[0] > 3.5


def test_segmentation_logits_match_odd_input_sizes_and_stage_maps_align():
    model = create_model("hct_tiny_seg").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 300, 517))
    assert out.shape == (1, 4, 300, 517)
    assert model.input_multiple == 128
    features = model.backbone.forward_features(torch.randn(1, 3, 256, 384))
    assert [f.shape[-2:] for f in features] == [(256 // s, 384 // s) for s in model.backbone.feature_strides]
    assert [f.shape[1] for f in features] == model.backbone.feature_channels


def test_create_model_overrides_and_bad_settings():
    seg = create_model("hct_tiny_seg", in_channels=1, num_classes=7)
    assert (seg.in_channels, seg.out_channels) == (1, 7)
    assert seg(torch.randn(1, 1, 130, 140)).shape == (1, 7, 130, 140)
    cls = create_model("hct_base", in_channels=3, num_classes=5, kernel="softmax")
    assert (cls.in_channels, cls.out_channels, cls.config.kernel) == (3, 5, "softmax")
    assert cls.eval()(torch.randn(1, 3, 160, 160)).shape == (1, 5)
    with pytest.raises(HiresError, match="unknown option.*widht.*valid options: .*channels"):
        create_model("hct_base", widht=3)
    with pytest.raises(HiresError, match="task is fixed by the model name"):
        create_model("hct_base", task="segmentation")
    with pytest.raises(HiresError, match="divisible by heads"):
        create_model("hct_base", channels=[16, 32, 60, 128, 256])
    with pytest.raises(HiresError, match="at least 8"):
        create_model("hct_tiny_cls")(torch.randn(1, 3, 4, 64))


def test_receptive_field_matches_gradients_and_attention_is_global():
    torch.manual_seed(0)
    conv_only = HCTConfig(in_channels=1, channels=(8, 8, 8, 8, 8), blocks=(1, 1, 1, 1, 1), num_conv_stages=5,
                          pool_padding=1)
    backbone = HCTBackbone(conv_only).eval()
    x = torch.randn(1, 1, 256, 256, requires_grad=True)
    feature = backbone.forward_features(x)[2]  # stride 32, 8 x 8
    feature[0, :, 4, 4].sum().backward()
    rows = x.grad[0, 0].abs().sum(dim=1).nonzero()
    extent = int(rows.max() - rows.min()) + 1
    assert 0.8 * conv_only.receptive_fields()[2] <= extent <= conv_only.receptive_fields()[2]

    model = create_model("hct_tiny_seg").eval()
    x = torch.randn(1, 3, 512, 512, requires_grad=True)
    first_ac = model.backbone.forward_features(x)[model.config.num_conv_stages]  # stride 64, 8 x 8
    first_ac[0, :, 4, 4].sum().backward()
    assert model.config.receptive_fields()[model.config.num_conv_stages] < 512 - 2 * 64
    assert x.grad[0, :, :8, :8].abs().sum() > 0  # the far corner, beyond the convolutional receptive field
    assert model.receptive_field == model.config.receptive_fields()[-1] and 0 < model.halo <= 128
