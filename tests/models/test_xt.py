"""xT: nested tokenization, causal context encoder (full and streaming Transformer-XL form), heads, registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from napari_hires.errors import HiresError
from napari_hires.models import count_parameters, create_model, list_models, load_model, save_model
from napari_hires.models.context_encoder import (
    CausalAttention,
    ContextEncoder,
    banded_causal_mask,
    grid_coords,
    sincos_2d,
)
from napari_hires.models.xt import XTBackbone, XTConfig, region_order, tokenize, untokenize

# A very small MaxViT region encoder: 64 px regions (P = 2), 2 x 2 coarse tokens per region.
SMALL_MAXVIT = {"window_size": 2, "stem_width": 8, "depths": (1, 1, 1, 1), "widths": (8, 8, 16, 16),
                "head_size": 8, "drop_path_rate": 0.0, "out_indices": (1, 2, 3, 4)}
SMALL = dict(region_size=64, region_encoder_args=SMALL_MAXVIT, hidden=32, num_heads=2, mlp_hidden=64,
             decoder_width=8, num_classes=3)


def small_backbone(**kw) -> XTBackbone:
    torch.manual_seed(0)
    return XTBackbone(XTConfig(**{**SMALL, "task": "segmentation", **kw})).eval()


def small_context(**kw) -> ContextEncoder:
    torch.manual_seed(0)
    args = dict(in_dim=8, hidden=16, depth=2, num_heads=2, mlp_hidden=32, mem_chip=3, cls_token=True)
    return ContextEncoder(**{**args, **kw}).eval()


class SavedBytes:
    """Bytes of tensors autograd saves for backward, bucketed per step (deduplicated by storage within a step)."""

    def __init__(self) -> None:
        self.steps: list[int] = [0]
        self._seen: set[int] = set()

    def new_step(self, *_args) -> None:
        self.steps.append(0)
        self._seen = set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self._seen:
            self._seen.add(ptr)
            self.steps[-1] += t.numel() * t.element_size()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


# --- nested tokenization -----------------------------------------------------------------------------------------


def test_tokenize_is_row_major_and_untokenize_its_exact_inverse():
    x = torch.randn(2, 3, 3 * 16, 5 * 16)
    regions = tokenize(x, 16)
    assert regions.shape == (2 * 15, 3, 16, 16)
    # region k of image b is the crop at (k // 5, k % 5)
    assert torch.equal(regions[15 + 7], x[1, :, 16:32, 32:48])
    assert torch.equal(untokenize(regions, 3, 5), x)
    with pytest.raises(HiresError, match="multiples of the region size 16"):
        tokenize(x[..., :40], 16)


def test_region_orders():
    assert region_order(2, 3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert region_order(2, 3, "zigzag") == [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)]


def test_batched_region_encoding_equals_per_crop_encoding():
    bb = small_backbone()
    x = torch.randn(1, 3, 64, 192)
    with torch.no_grad():
        batched = bb.region_encoder.forward_features(tokenize(x, 64))
        for k, (i, j) in enumerate(region_order(1, 3)):
            alone = bb.region_encoder.forward_features(x[..., i * 64:(i + 1) * 64, j * 64:(j + 1) * 64])
            for a, b in zip(alone, batched):
                torch.testing.assert_close(a[0], b[k], rtol=1e-5, atol=1e-5)


# --- context encoder ---------------------------------------------------------------------------------------------


def test_sincos_embedding_is_mae_layout_of_global_coordinates():
    coords = grid_coords(2, 3, row0=4, col0=6)
    assert coords.tolist() == [[4, 6], [4, 7], [4, 8], [5, 6], [5, 7], [5, 8]]
    emb = sincos_2d(coords, 16)
    # first half encodes the column, second half the row; omega_0 = 1, so sin/cos of the raw coordinate
    assert emb[1, 0] == pytest.approx(math.sin(7)) and emb[1, 4] == pytest.approx(math.cos(7))
    assert emb[3, 8] == pytest.approx(math.sin(5)) and emb[3, 12] == pytest.approx(math.cos(5))
    assert emb[4, 11] == pytest.approx(math.sin(5 * 10000 ** -0.75), abs=1e-6)
    assert emb[4, 15] == pytest.approx(math.cos(5 * 10000 ** -0.75), abs=1e-6)


def test_causality_past_outputs_ignore_future_tokens_cls_sees_all():
    enc = small_context()
    tokens = torch.randn(1, 20, 8)
    coords = grid_coords(4, 5)
    t = 11
    changed = tokens.clone()
    changed[:, t + 1:] += torch.randn(1, 20 - t - 1, 8)
    with torch.no_grad():
        a, b = enc(tokens, coords, append_cls=True), enc(changed, coords, append_cls=True)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1:-1] - b[:, t + 1:-1]).abs().amax(-1).min() > 1e-3
    assert (a[:, -1] - b[:, -1]).abs().max() > 1e-3  # CLS, appended last, sees the whole sequence


def _explicit_attention(attn: CausalAttention, x: torch.Tensor, mem: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal -inf mask) v, written out with matmuls (current token i sees mem + <= i)."""
    keys = x if mem is None else torch.cat([mem, x], 1)
    q = attn.qkv(x).chunk(3, -1)[0]
    _, k, v = attn.qkv(keys).chunk(3, -1)
    heads = attn.num_heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n_mem = keys.shape[1] - x.shape[1]
    allowed = torch.ones(x.shape[1], keys.shape[1], dtype=torch.bool).tril(n_mem)
    scores = scores.masked_fill(~allowed, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
    return attn.proj(out)


@pytest.mark.parametrize("n_mem", [0, 12])
def test_exact_attention_matches_explicit_causal_softmax(n_mem):
    torch.manual_seed(1)
    attn = CausalAttention(32, 4)
    x = torch.randn(2, 9, 32)
    mem = torch.randn(2, n_mem, 32) if n_mem else None
    with torch.no_grad():
        torch.testing.assert_close(attn(x, mem), _explicit_attention(attn, x, mem), rtol=1e-5, atol=1e-6)


def test_context_encoder_parameter_count_matches_release():
    """Released xl head (Swin-T 768-channel input, 284 classes): 590,592 + 2 x 9,441,792 + 768 + 219,932."""
    with torch.device("meta"):
        enc = ContextEncoder(768, hidden=768, depth=2, mlp_hidden=3072, cls_token=True)
        head = torch.nn.Sequential(torch.nn.LayerNorm(768), torch.nn.Linear(768, 284))
        published = create_model("xt_maxvit_tiny")
    assert enc.layers[0].attn.num_heads == 6  # dim // 128, not the 'naive' num_heads = dim
    assert count_parameters(enc.input_proj) == 590_592
    assert count_parameters(enc.layers[0]) == 9_441_792
    assert count_parameters(head) == 219_932
    total = count_parameters(enc) + count_parameters(head)
    assert abs(total - 19_694_876) <= 0.005 * 19_694_876
    # the registered model: MaxViT-T (P=8) has 512 channels at stride 32, so its input projection is 256*768 smaller
    ctx = count_parameters(published.backbone.context) + count_parameters(published.head)
    assert ctx == total - 256 * 768
    # region encoder = MaxViT-T at P=8 (30,925,936) without its 776,680-parameter classification head
    assert count_parameters(published.backbone.region_encoder) == 30_925_936 - 776_680


# --- streaming Transformer-XL form -------------------------------------------------------------------------------


def _stream(enc: ContextEncoder, tokens: torch.Tensor, coords: torch.Tensor, region_len: int, cls: bool):
    memory, outs = None, []
    n_regions = tokens.shape[1] // region_len
    for r in range(n_regions):
        part = slice(r * region_len, (r + 1) * region_len)
        out, memory = enc.step(tokens[:, part], coords[part], memory, append_cls=cls and r == n_regions - 1)
        outs.append(out)
        assert all(m.shape[1] <= (enc.mem_chip - 1) * region_len and not m.requires_grad for m in memory)
    return torch.cat(outs, 1)


@pytest.mark.parametrize("mem_chip", [1, 2, 4])
def test_streaming_equals_banded_mask_reference(mem_chip):
    enc = small_context(mem_chip=mem_chip).double()
    region_len, n_regions = 6, 7
    tokens = torch.randn(2, region_len * n_regions, 8, dtype=torch.float64)
    coords = torch.cat([grid_coords(2, 3, 2 * (r // 3), 3 * (r % 3)) for r in range(n_regions)])
    with torch.no_grad():
        streamed = _stream(enc, tokens, coords, region_len, cls=True)
        reference = enc.forward_banded(tokens, coords, region_len, append_cls=True)
        full = enc(tokens, coords, append_cls=True)
    torch.testing.assert_close(streamed, reference, rtol=1e-10, atol=1e-10)
    # the band matters: later regions differ from unbounded causal attention, the first mem_chip regions do not
    torch.testing.assert_close(streamed[:, : mem_chip * region_len], full[:, : mem_chip * region_len])
    assert (streamed[:, -1] - full[:, -1]).abs().max() > 1e-6


def test_banded_mask_shape():
    mask = banded_causal_mask(7, 2, 2)  # 3 regions of 2 tokens + CLS (belongs to the last region)
    assert mask[6].tolist() == [False, False, True, True, True, True, True]
    assert mask[3].tolist() == [True, True, True, True, False, False, False]


def _banded_model_reference(bb: XTBackbone, x: torch.Tensor, passes: int = 1) -> torch.Tensor:
    """Coarsest map with context, from batched region encoding and the banded-mask context over region order."""
    r = bb.config.region_size
    nh, nw = x.shape[-2] // r, x.shape[-1] // r
    order = region_order(nh, nw, bb.config.region_order)
    coarse = bb.region_encoder.forward_features(tokenize(x, r))[-1]  # (nh*nw, C, h, w)
    _, c, h, w = coarse.shape
    seq = torch.cat([coarse[i * nw + j].flatten(1).T for i, j in order] * passes)[None]
    coords = torch.cat([grid_coords(h, w, i * h, j * w) for i, j in order] * passes)
    hidden = bb.context.forward_banded(seq, coords, h * w)[:, -len(order) * h * w:]
    ctx = bb.context.output_proj(hidden)[0].reshape(len(order), h, w, c).permute(0, 3, 1, 2)
    out = torch.zeros(c, nh * h, nw * w, dtype=x.dtype)
    for k, (i, j) in enumerate(order):
        out[:, i * h:(i + 1) * h, j * w:(j + 1) * w] = coarse[i * nw + j] + ctx[k]
    return out


@pytest.mark.parametrize("order", ["row", "zigzag"])
def test_model_streaming_equals_banded_reference(order):
    bb = small_backbone(context="streaming", mem_chip=2, region_order=order)
    x = torch.randn(1, 3, 128, 192)
    with torch.no_grad():
        maps = bb.forward_features(x)
        reference = _banded_model_reference(bb, x)
    assert [m.shape[-2:] for m in maps] == [(32, 48), (16, 24), (8, 12), (4, 6)]
    torch.testing.assert_close(maps[-1][0], reference, rtol=1e-5, atol=1e-5)


def test_two_stream_memory_pass_changes_values_but_never_the_gradient():
    bb = small_backbone(context="streaming", two_stream=True)
    single = small_backbone(context="streaming")
    x = torch.randn(1, 3, 128, 128, requires_grad=True)
    two = bb.forward_features(x)[-1]
    with torch.no_grad():
        # equals the banded reference run over the region sequence twice, keeping the second pass
        torch.testing.assert_close(two[0], _banded_model_reference(bb, x, passes=2), rtol=1e-5, atol=1e-5)
        one = single.forward_features(x)[-1]
    # region (0, 0) sees the last regions through the memory pass ...
    assert (two[..., :2, :2] - one[..., :2, :2]).abs().max() > 1e-6
    # ... but that pass ran without gradients, so region (0, 0)'s loss does not reach the other regions' pixels
    two[..., :2, :2].sum().backward()
    assert x.grad[..., :64, :64].abs().max() > 0
    assert x.grad[..., 64:, :].abs().max() == 0 and x.grad[..., :, 64:].abs().max() == 0


# --- memory scaling ----------------------------------------------------------------------------------------------


def test_full_context_attention_memory_grows_quadratically():
    enc = ContextEncoder(16, hidden=32, depth=1, num_heads=1, mlp_hidden=32)
    sizes = []
    for n in (2048, 4096):
        counter = SavedBytes()
        with sdpa_kernel(SDPBackend.MATH), counter.hooks():
            enc(torch.randn(1, n, 16), grid_coords(32, n // 32))
        sizes.append(counter.steps[-1])
    assert 3.5 < sizes[1] / sizes[0] < 4.1


def test_streaming_peak_per_region_is_flat_as_regions_grow():
    bb = small_backbone(context="streaming", mem_chip=4)
    peaks, totals, outputs = [], [], []
    for side in (2, 3):  # 4 then 9 regions
        counter = SavedBytes()
        handle = bb.region_encoder.stem.register_forward_pre_hook(counter.new_step)  # once per region step
        with sdpa_kernel(SDPBackend.MATH), counter.hooks():
            maps = bb.forward_features(torch.randn(1, 3, 64 * side, 64 * side))
        handle.remove()
        steps = counter.steps[1:]
        assert len(steps) == side * side
        peaks.append(max(steps))
        totals.append(sum(steps))
        outputs.append(sum(m.numel() for m in maps))
    assert peaks[0] == peaks[1]  # once mem_chip regions are in memory, a step saves the same whatever the count
    assert totals[1] > 2 * totals[0]  # (training keeps each step's graph: linear in regions)
    assert 4 * outputs[1] == 9 * outputs[0]  # only the stitched output grows, linearly


# --- models and registry -----------------------------------------------------------------------------------------


def test_registered_names_and_small_sizes():
    assert {"xt_maxvit_tiny", "xt_maxvit_tiny_seg", "xt_nano_seg", "xt_nano_cls"} <= set(list_models("xt*"))
    with torch.device("meta"):
        for name in ("xt_nano_seg", "xt_nano_cls"):
            assert count_parameters(create_model(name)) < 1_500_000


def test_nano_segmentation_dense_logits_at_any_size():
    model = create_model("xt_nano_seg").eval()
    assert model.input_multiple == 128 and model.halo == 128 and model.receptive_field == 8 * 128
    with torch.no_grad():
        out = model(torch.randn(1, 3, 300, 517))  # padded to 3 x 5 regions of 128, cropped back
    assert out.shape == (1, 4, 300, 517) and torch.isfinite(out).all()


@pytest.mark.parametrize("context", ["full", "streaming"])
def test_classifier_overrides(context):
    model = create_model("xt_nano_cls", **{**SMALL, "in_channels": 1, "num_classes": 5, "context": context})
    model.eval()
    assert model.describe()["halo"] == 0 and model.out_channels == 5
    with torch.no_grad():
        out = model(torch.randn(2, 1, 100, 150))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_segmentation_trains_end_to_end_in_streaming_mode():
    model = create_model("xt_nano_seg", context="streaming", **SMALL)
    out = model(torch.randn(1, 3, 128, 128))
    F.cross_entropy(out, torch.randint(0, 3, (1, 128, 128))).backward()
    assert model.backbone.context.output_proj.weight.grad.abs().max() > 0
    assert model.backbone.region_encoder.stem[0].weight.grad is not None


def test_bad_configurations_are_clear_errors():
    with pytest.raises(HiresError, match="unknown option"):
        create_model("xt_nano_seg", task="classification")
    with pytest.raises(HiresError, match="multiple of 128"):
        create_model("xt_nano_seg", region_size=96)
    with pytest.raises(HiresError, match="context must be one of"):
        create_model("xt_nano_cls", context="hyper")
    with pytest.raises(ValueError, match="expects a"):
        create_model("xt_nano_cls", **SMALL)(torch.randn(1, 4, 64, 64))


def test_hct_region_encoder():
    model = create_model("xt_nano_seg", region_encoder="hct", region_size=128,
                         region_encoder_args={"channels": (8, 8, 16, 16, 16), "blocks": (1, 1, 1, 1, 1)})
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 130, 256))
    assert out.shape == (1, 4, 130, 256)


def test_save_and_load_round_trip_with_region_encoder_overrides(tmp_path):
    model = create_model("xt_nano_cls", **{**SMALL, "context": "streaming"}).eval()
    save_model(model, tmp_path / "xt")
    loaded = load_model(tmp_path / "xt").eval()
    assert loaded.config == model.config
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
