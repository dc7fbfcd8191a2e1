"""MaxViT (Tu et al., ECCV 2022): MBConv + block attention + grid attention, as a backbone with task heads.

Follows /work/shared/models/SPEC.md section 2 (official google-research/maxvit). Block attention mixes pixels inside
contiguous P x P windows; grid attention mixes a dilated G x G grid spanning the whole map, so cost stays linear in
pixels at fixed P = G. Stride-2 convolutions pad as TensorFlow's "SAME" (the published weights need it); symmetric
padding 1 is kept as ``padding="symmetric"`` for weights trained that way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models.base import Backbone, configure
from napari_hires.models.heads import ClassificationModel, SegmentationModel
from napari_hires.models.layers import DropPath
from napari_hires.models.registry import register_model

_FAMILY = "maxvit"
#: How stride-2 convolutions pad: "same" (TensorFlow SAME, as published) or "symmetric" (1 on every side).
PADDINGS = ("same", "symmetric")


@dataclass(frozen=True)
class MaxViTConfig:
    """Hyper-parameters of a MaxViT; defaults are the published MaxViT-T at 224 (P = G = 7, 1000 classes).

    ``window_size`` is both the block window P and the grid size G, so inputs must be multiples of
    ``32 * window_size`` (the models pad any size to that). ``out_indices`` picks which maps ``forward_features``
    returns: 0 = stem (stride 2), 1-4 = stages (strides 4-32).

    Tiling: an output pixel depends densely on its stage-4 block window (``receptive_field = 32 * P`` input pixels)
    and thinly on the whole tile through grid attention, so no halo makes tiling exactly seam-free. Segmentation
    models recommend ``halo = 8 * P`` input pixels per side (half a stage-3 block window, 64 px at P = 8). Measured
    once with input gradients of a centre output pixel of ``maxvit_nano_seg`` at init: a +-64 px square held 29% of
    the gradient mass in a 512 px tile and 21% in a 1024 px tile (5x and 13x the tile-average density), the rest is
    spread tile-wide, so larger halos buy little per pixel of overlap. Classifiers work per tile and need no halo.
    """

    in_channels: int = 3
    num_classes: int = 1000
    stem_width: int = 64
    depths: tuple[int, ...] = (2, 2, 5, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    head_size: int = 32
    window_size: int = 7
    mbconv_expansion: int = 4
    se_ratio: float = 0.25
    ffn_expansion: int = 4
    bn_eps: float = 1e-3
    bn_momentum: float = 0.01  # PyTorch convention (TF 0.99)
    ln_eps: float = 1e-5
    drop_path_rate: float = 0.2
    out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)
    decoder_width: int = 64  # FPN width of the segmentation head
    padding: str = "same"  # stride-2 convolutions: "same" (TF SAME, the published weights) or "symmetric"

    def __post_init__(self) -> None:
        for name in ("depths", "widths", "out_indices"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        if len(self.depths) != 4 or len(self.widths) != 4:
            raise HiresError(f"MaxViT has 4 stages: give 4 depths and 4 widths, got {self.depths} and {self.widths}")
        if any(w % self.head_size for w in self.widths):
            raise HiresError(f"MaxViT widths {self.widths} must be multiples of head_size {self.head_size}; change one")
        if self.padding not in PADDINGS:
            raise HiresError(f"MaxViT padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}: \"same\" "
                             "for published weights, \"symmetric\" for weights trained with padding 1 on every side")
        if self.window_size < 1:
            raise HiresError(f"MaxViT window_size must be at least 1, got {self.window_size}")
        if not self.out_indices or sorted(set(self.out_indices)) != list(self.out_indices) or not all(
            0 <= i <= 4 for i in self.out_indices
        ):
            raise HiresError(f"MaxViT out_indices must be increasing values in 0..4, got {self.out_indices}")

    @property
    def input_multiple(self) -> int:
        """Side multiple every input must have: the stride-32 map must split into P x P windows and G x G grids."""
        return 32 * self.window_size


def _gelu() -> nn.Module:
    """GELU with the tanh approximation, as in the official code."""
    return nn.GELU(approximate="tanh")


def _batch_norm(channels: int, cfg: MaxViTConfig) -> nn.BatchNorm2d:
    """BatchNorm with the TF hyper-parameters (eps 1e-3, momentum 0.99 -> PyTorch 0.01)."""
    return nn.BatchNorm2d(channels, eps=cfg.bn_eps, momentum=cfg.bn_momentum)


def block_partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/P * W/P, P*P, C): contiguous P x P windows, row-major."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // size, size, w // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, c)


def block_unpartition(windows: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`block_partition`: (B * H/P * W/P, P*P, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // size, width // size, size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, height, width, c)


def grid_partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/G * W/G, G*G, C): token (a, b) of window (p, q) is pixel (a*H/G + p, b*W/G + q)."""
    b, h, w, c = x.shape
    x = x.reshape(b, size, h // size, size, w // size, c).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, size * size, c)


def grid_unpartition(windows: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`grid_partition`: (B * H/G * W/G, G*G, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, height // size, width // size, size, size, c).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, height, width, c)


def _init_weights(module: nn.Module) -> None:
    """Official init: conv and dense kernels N(0, 0.02), biases zero (norms keep ones/zeros)."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class SameConv2d(nn.Conv2d):
    """Conv2d padded as TensorFlow's "SAME" for any input size: output ceil(H / stride), the odd pixel of padding at
    the bottom/right (the published MaxViT's stride-2 convolutions)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def strided_conv(c_in: int, c_out: int, cfg: MaxViTConfig, *, groups: int = 1, bias: bool = True) -> nn.Conv2d:
    """The 3 x 3 stride-2 convolution, padded as ``cfg.padding`` says."""
    if cfg.padding == "same":
        return SameConv2d(c_in, c_out, 3, stride=2, groups=groups, bias=bias)
    return nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, groups=groups, bias=bias)


class Stem(nn.Sequential):
    """Conv3x3/2 (bias) -> BN -> GELU -> Conv3x3 (bias): image to stride-2 features."""

    def __init__(self, cfg: MaxViTConfig) -> None:
        w = cfg.stem_width
        super().__init__(
            strided_conv(cfg.in_channels, w, cfg),
            _batch_norm(w, cfg),
            _gelu(),
            nn.Conv2d(w, w, 3, padding=1),
        )


class SqueezeExcite(nn.Module):
    """Channel gating: mean-pool -> 1x1 reduce -> SiLU -> 1x1 expand -> sigmoid, times the input."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class MBConv(nn.Module):
    """Pre-BN inverted bottleneck with SE; downsamples in the depthwise conv when ``stride`` is 2."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_path: float, cfg: MaxViTConfig) -> None:
        super().__init__()
        inner = out_ch * cfg.mbconv_expansion
        self.residual = nn.Sequential(
            _batch_norm(in_ch, cfg),
            nn.Conv2d(in_ch, inner, 1, bias=False),
            _batch_norm(inner, cfg),
            _gelu(),
            strided_conv(inner, inner, cfg, groups=inner, bias=False) if stride == 2
            else nn.Conv2d(inner, inner, 3, padding=1, groups=inner, bias=False),
            _batch_norm(inner, cfg),
            _gelu(),
            SqueezeExcite(inner, max(1, int(out_ch * cfg.se_ratio))),
            nn.Conv2d(inner, out_ch, 1),
        )
        shortcut: list[nn.Module] = [nn.AvgPool2d(2)] if stride == 2 else []
        if in_ch != out_ch:
            shortcut.append(nn.Conv2d(in_ch, out_ch, 1))
        self.shortcut = nn.Sequential(*shortcut)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.drop_path(self.residual(x))


class RelativePositionBias(nn.Module):
    """Learned bias T[heads, 2P-1, 2P-1] expanded to B[h, (i,j), (x,y)] = T[h, x-i+P-1, y-j+P-1] by an index buffer."""

    def __init__(self, heads: int, size: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.empty(heads, 2 * size - 1, 2 * size - 1))
        nn.init.normal_(self.table, std=0.02)
        rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        dr = rows[None, :] - rows[:, None] + size - 1  # key row minus query row, shifted to >= 0
        dc = cols[None, :] - cols[:, None] + size - 1
        self.register_buffer("index", dr * (2 * size - 1) + dc, persistent=False)

    def forward(self) -> torch.Tensor:
        return self.table.flatten(1)[:, self.index]


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with relative position bias; softmax in fp32."""

    def __init__(self, dim: int, head_size: int, size: int) -> None:
        super().__init__()
        self.heads, self.head_size = dim // head_size, head_size
        self.scale = head_size**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)  # fused q, k, v: same parameters as three biased dense layers
        self.proj = nn.Linear(dim, dim)
        self.bias = RelativePositionBias(self.heads, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, self.head_size).permute(2, 0, 3, 1, 4).unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1)
        attn = (logits.float() + self.bias()).softmax(dim=-1).to(v.dtype)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, t, c))


class FeedForward(nn.Sequential):
    """LayerNorm -> Linear C->4C -> GELU -> Linear 4C->C."""

    def __init__(self, dim: int, cfg: MaxViTConfig) -> None:
        super().__init__(
            nn.LayerNorm(dim, eps=cfg.ln_eps),
            nn.Linear(dim, dim * cfg.ffn_expansion),
            _gelu(),
            nn.Linear(dim * cfg.ffn_expansion, dim),
        )


class PartitionAttention(nn.Module):
    """Pre-LN block or grid attention on (B, H, W, C) maps, then the FFN, each with a stochastic-depth residual."""

    def __init__(self, dim: int, grid: bool, drop_path: float, cfg: MaxViTConfig) -> None:
        super().__init__()
        self.size = cfg.window_size
        self.partition, self.unpartition = (
            (grid_partition, grid_unpartition) if grid else (block_partition, block_unpartition)
        )
        self.norm = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.attn = WindowAttention(dim, cfg.head_size, self.size)
        self.ffn = FeedForward(dim, cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        y = self.unpartition(self.attn(self.partition(self.norm(x), self.size)), self.size, h, w)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.ffn(x))


class MaxViTBlock(nn.Module):
    """MBConv -> block attention + FFN -> grid attention + FFN, on NCHW maps."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, drop_path: float, cfg: MaxViTConfig) -> None:
        super().__init__()
        self.mbconv = MBConv(in_ch, out_ch, stride, drop_path, cfg)
        self.block_attn = PartitionAttention(out_ch, False, drop_path, cfg)
        self.grid_attn = PartitionAttention(out_ch, True, drop_path, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mbconv(x).permute(0, 2, 3, 1)
        return self.grid_attn(self.block_attn(x)).permute(0, 3, 1, 2)


class MaxViTBackbone(Backbone):
    """Stem and four MaxViT stages; ``forward_features`` returns the maps named by ``config.out_indices``."""

    def __init__(self, cfg: MaxViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.stem = Stem(cfg)
        total, bid = sum(cfg.depths), 0
        stages, in_ch = [], cfg.stem_width
        for depth, width in zip(cfg.depths, cfg.widths):
            blocks = []
            for j in range(depth):
                # official annealing: block b of all blocks is dropped with rate drop_path_rate * b / total
                blocks.append(MaxViTBlock(in_ch, width, 2 if j == 0 else 1, cfg.drop_path_rate * bid / total, cfg))
                in_ch, bid = width, bid + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        channels, strides = [cfg.stem_width, *cfg.widths], [2, 4, 8, 16, 32]
        self.feature_channels = [channels[i] for i in cfg.out_indices]
        self.feature_strides = [strides[i] for i in cfg.out_indices]
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = x.shape[-2:]
        m = self.config.input_multiple
        if h % m or w % m:
            raise HiresError(
                f"MaxViT with window {self.config.window_size} needs height and width that are multiples of {m} "
                f"(32 x window), got {h} x {w}. Pad or crop the input to a multiple of {m}, or call the model "
                "itself, which pads any size and crops back."
            )
        maps = [self.stem(x)]
        for stage in self.stages[: max(self.config.out_indices)]:
            maps.append(stage(maps[-1]))
        return [maps[i] for i in self.config.out_indices]


class TanhHead(nn.Module):
    """Classification head: global average pool -> LayerNorm -> Dense C -> tanh (pre-logits) -> Dense classes."""

    def __init__(self, dim: int, num_classes: int, cfg: MaxViTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=cfg.ln_eps)
        self.pre_logits = nn.Linear(dim, dim)
        self.fc = nn.Linear(dim, num_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.pre_logits(self.norm(x.mean(dim=(2, 3))))))


def build_classifier(cfg: MaxViTConfig) -> ClassificationModel:
    """MaxViT backbone + tanh pre-logits head: (B, classes) logits per tile."""
    if 4 not in cfg.out_indices:
        raise HiresError(f"a MaxViT classifier needs the last stage (4) in out_indices, got {cfg.out_indices}")
    backbone = MaxViTBackbone(cfg)
    head = TanhHead(cfg.widths[-1], cfg.num_classes, cfg)
    return ClassificationModel(
        backbone, head, cfg.num_classes, in_channels=cfg.in_channels, input_multiple=cfg.input_multiple,
        receptive_field=cfg.input_multiple, halo=0, config=cfg,
    )


def build_segmenter(cfg: MaxViTConfig) -> SegmentationModel:
    """MaxViT backbone + FPN decoder: (B, classes, H, W) logits at input resolution."""
    return SegmentationModel(
        MaxViTBackbone(cfg), cfg.num_classes, in_channels=cfg.in_channels, input_multiple=cfg.input_multiple,
        receptive_field=cfg.input_multiple, halo=8 * cfg.window_size, decoder_width=cfg.decoder_width, config=cfg,
    )


def _configure(name: str, base: MaxViTConfig, overrides: dict[str, Any]) -> MaxViTConfig:
    """``base`` with ``overrides`` applied, or a clear error naming the valid options."""
    return configure(name, base, overrides, fixed=())


_TINY = MaxViTConfig()
_TINY_P8 = replace(_TINY, window_size=8)
_TINY_SEG = replace(_TINY_P8, num_classes=4, out_indices=(1, 2, 3, 4), decoder_width=128)
_NANO_SEG = replace(
    _TINY_P8, num_classes=4, stem_width=16, depths=(1, 1, 1, 1), widths=(32, 48, 64, 96), head_size=16,
    drop_path_rate=0.1, out_indices=(1, 2, 3, 4), decoder_width=32,
)
_NANO_CLS = replace(_NANO_SEG, num_classes=2, out_indices=(0, 1, 2, 3, 4))


#: The published MaxViT sizes (TF release, as timm's ``maxvit_*_tf`` hosts them): stem width, depths, widths. Heads
#: are 32 channels wide, the pre-logits layer is as wide as the last stage, windows and grids are image size / 32.
TF_SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "tiny": (64, (2, 2, 5, 2), (64, 128, 256, 512)),
    "small": (64, (2, 2, 5, 2), (96, 192, 384, 768)),
    "base": (64, (2, 6, 14, 2), (96, 192, 384, 768)),
    "large": (128, (2, 6, 14, 2), (128, 256, 512, 1024)),
    "xlarge": (192, (2, 6, 14, 2), (192, 384, 768, 1536)),
}
#: The released weights per size: (image size, classes). ``*_in21k`` names are the ImageNet-21k pretraining heads.
TF_RELEASES: dict[str, tuple[tuple[int, int], ...]] = {
    "tiny": ((224, 1000), (384, 1000), (512, 1000)),
    "small": ((224, 1000), (384, 1000), (512, 1000)),
    "base": ((224, 1000), (384, 1000), (512, 1000), (224, 21843)),
    "large": ((224, 1000), (384, 1000), (512, 1000), (224, 21843)),
    "xlarge": ((384, 1000), (512, 1000), (224, 21843)),
}
IN21K_CLASSES = 21843


def tf_name(size: str, image_size: int, num_classes: int = 1000) -> str:
    """The registered name of a published configuration: ``maxvit_tiny_tf_224``, ``maxvit_base_tf_224_in21k``."""
    return f"maxvit_{size}_tf_{image_size}" + ("_in21k" if num_classes == IN21K_CLASSES else "")


def tf_config(size: str, image_size: int, num_classes: int = 1000) -> MaxViTConfig:
    """The configuration of a published MaxViT size at ``image_size`` (window = grid = image_size / 32)."""
    stem, depths, widths = TF_SIZES[size]
    return MaxViTConfig(num_classes=num_classes, stem_width=stem, depths=depths, widths=widths, head_size=32,
                        window_size=image_size // 32)


def _builder(name: str, base: MaxViTConfig, build: Any) -> Any:
    """A registry builder ``(**overrides) -> model`` for ``base``."""

    def builder(**overrides: Any) -> ClassificationModel | SegmentationModel:
        return build(_configure(name, base, overrides))

    builder.__name__ = name
    return builder


for _size, _releases in TF_RELEASES.items():
    for _image, _classes in _releases:
        _name, _cfg = tf_name(_size, _image, _classes), tf_config(_size, _image, _classes)
        _data = "ImageNet-21k" if _classes == IN21K_CLASSES else "ImageNet-1k"
        register_model(_name, family=_FAMILY, task="classification", published=True,
                       description=f"MaxViT-{_size.capitalize()} as published at {_image} px ({_data}, "
                                   f"{_classes} classes; window {_cfg.window_size}), the timm {_name} layout")(
            _builder(_name, _cfg, build_classifier)
        )


@register_model("maxvit_tiny", family=_FAMILY, task="classification", published=True,
                description="MaxViT-T as published (P=G=7, 224 input, 1000 classes), 30.9M params")
def maxvit_tiny(**overrides: Any) -> ClassificationModel:
    """MaxViT-T classifier, the paper's ImageNet-1k configuration."""
    return build_classifier(_configure("maxvit_tiny", _TINY, overrides))


@register_model("maxvit_tiny_p8", family=_FAMILY, task="classification",
                description="MaxViT-T with P=G=8 so tiles are multiples of 256")
def maxvit_tiny_p8(**overrides: Any) -> ClassificationModel:
    """MaxViT-T classifier with 8 x 8 windows and grids (tiles in multiples of 256)."""
    return build_classifier(_configure("maxvit_tiny_p8", _TINY_P8, overrides))


@register_model("maxvit_tiny_seg", family=_FAMILY, task="segmentation",
                description="MaxViT-T (P=8) backbone with an FPN head: dense logits at input resolution")
def maxvit_tiny_seg(**overrides: Any) -> SegmentationModel:
    """MaxViT-T (P = 8) segmenter over strides 4-32."""
    return build_segmenter(_configure("maxvit_tiny_seg", _TINY_SEG, overrides))


@register_model("maxvit_nano_seg", family=_FAMILY, task="segmentation",
                description="Small MaxViT (P=8, one block per stage, 0.6M params) with an FPN head for CPU tiles")
def maxvit_nano_seg(**overrides: Any) -> SegmentationModel:
    """Small MaxViT segmenter, cheap enough for 512 x 512 tiles on a CPU."""
    return build_segmenter(_configure("maxvit_nano_seg", _NANO_SEG, overrides))


@register_model("maxvit_nano_cls", family=_FAMILY, task="classification",
                description="Small MaxViT (P=8, one block per stage, 0.6M params) tile classifier for CPU tiles")
def maxvit_nano_cls(**overrides: Any) -> ClassificationModel:
    """Small MaxViT tile classifier, cheap enough for 512 x 512 tiles on a CPU."""
    return build_classifier(_configure("maxvit_nano_cls", _NANO_CLS, overrides))
