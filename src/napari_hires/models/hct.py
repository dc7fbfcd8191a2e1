"""HCT, the High-resolution Convolutional Transformer (Taha et al., MICCAI 2022), in plain PyTorch.

A pre-activation ResNet (GMIC's ResNet-22) whose last stages use attention-convolution (AC) blocks with Performer
(FAVOR+) linear attention, so cost and activation memory stay linear in pixels (3328 x 2560 mammograms in float32).
Follows the models SPEC.md, section 1, checked against the official code (whiterabbit-ai/hct).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models.base import Backbone, HiresModel, configure
from napari_hires.models.heads import ClassificationModel, SegmentationModel
from napari_hires.models.performer import Kernel, PerformerAttention
from napari_hires.models.registry import register_model

STEM_STRIDE = 4  # 7x7 stride-2 conv, then 3x3 stride-2 max pool
STEM_RECEPTIVE_FIELD = 7 + 2 * 2
MAX_HALO = 128


@dataclass(frozen=True)
class HCTConfig:
    """HCT hyper-parameters; defaults are the published ``HCTBase`` (1 channel, 2 classes, 1,737,010 parameters).

    ``channels``/``blocks``/``strides`` list the five stages; the first ``num_conv_stages`` are BasicBlockV2 stages,
    the rest AC stages (Performer attention at the block's input width, then a 3x3 conv to the output width).
    ``pool_padding`` is the stem max pool's padding: 0 as published (sizes shrink unevenly: 512 -> 256 -> 127, so
    stage maps are offset by half a stem stride), 1 for dense prediction so every stage map is exactly H / stride
    and pixel-aligned with the input. ``task`` is "classification" (final BN -> ReLU -> global pool -> Linear) or
    "segmentation" (FPN decoder of width ``decoder_width`` over the five stage maps, logits at input resolution).

    Tiling facts: ``receptive_field`` is the theoretical receptive field of the convolutional path (attention makes
    every output depend on the whole tile, so this is the local part); ``halo`` is half the receptive field of the
    convolutional stages before the first attention block, capped at 128 pixels.
    """

    in_channels: int = 1
    num_classes: int = 2
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    blocks: tuple[int, ...] = (2, 2, 2, 2, 2)
    strides: tuple[int, ...] = (2, 2, 2, 2, 2)
    num_conv_stages: int = 3
    heads: int = 8
    attention_dropout: float = 0.1
    kernel: Kernel = "relu"
    nb_features: int | None = None
    pool_padding: int = 0
    task: str = "classification"
    decoder_width: int = 64

    def __post_init__(self) -> None:
        for name in ("channels", "blocks", "strides"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        problems = []
        if not len(self.channels) == len(self.blocks) == len(self.strides):
            problems.append("channels, blocks and strides must list the same number of stages")
        if not 0 <= self.num_conv_stages <= len(self.channels):
            problems.append(f"num_conv_stages must be between 0 and {len(self.channels)}")
        widths = [self.channels[max(i - 1, 0)] for i in range(self.num_conv_stages, len(self.channels))]
        widths += list(self.channels[self.num_conv_stages:])
        if any(w % self.heads for w in widths):
            problems.append(f"every AC-stage width ({sorted(set(widths))}) must be divisible by heads={self.heads}")
        if self.kernel not in ("relu", "softmax"):
            problems.append(f"kernel must be 'relu' or 'softmax', not {self.kernel!r}")
        if self.task not in ("classification", "segmentation"):
            problems.append(f"task must be 'classification' or 'segmentation', not {self.task!r}")
        if self.pool_padding not in (0, 1):
            problems.append("pool_padding must be 0 (published) or 1 (aligned dense maps)")
        if problems:
            raise HiresError("invalid HCT configuration: " + "; ".join(problems) + ".")

    @property
    def feature_strides(self) -> list[int]:
        """Input pixels per pixel of each stage map."""
        return [STEM_STRIDE * math.prod(self.strides[: i + 1]) for i in range(len(self.strides))]

    def receptive_fields(self) -> list[int]:
        """Theoretical receptive field (input pixels) of each stage's output along the convolutional path."""
        rf, jump = STEM_RECEPTIVE_FIELD, STEM_STRIDE
        out = []
        for i, (n, stride) in enumerate(zip(self.blocks, self.strides)):
            convs_per_block = 2 if i < self.num_conv_stages else 1
            for b in range(n):
                for c in range(convs_per_block):
                    rf += 2 * jump
                    if b == 0 and c == 0:
                        jump *= stride
            out.append(rf)
        return out

    @property
    def halo(self) -> int:
        """Recommended tile overlap per side: half the local (pre-attention) receptive field, capped at 128."""
        local = ([STEM_RECEPTIVE_FIELD] + self.receptive_fields())[self.num_conv_stages]
        return min(local // 2, MAX_HALO)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlockV2(nn.Module):
    """Pre-activation residual block; the first block of a stage projects the pre-activated tensor (GMIC style)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = conv3x3(c_out, c_out)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(torch.relu(self.bn2(self.conv1(out))))
        return out + residual


class ACBlock(nn.Module):
    """Attention-convolution block: Performer attention at the input width, then a (strided) 3x3 conv to C_out."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: bool = False, *, heads: int = 8,
                 kernel: Kernel = "relu", nb_features: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.attention = PerformerAttention(c_in, heads, nb_features=nb_features, kernel=kernel, dropout=dropout)
        self.bn2 = nn.BatchNorm2d(c_in)
        self.conv = conv3x3(c_in, c_out, stride)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        out = torch.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        tokens = out.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major; no positional encoding
        out = self.attention(tokens).transpose(1, 2).reshape(b, c, h, w) + x
        return self.conv(torch.relu(self.bn2(out))) + residual


class HCTBackbone(Backbone):
    """Stem, convolutional stages and AC stages; ``forward_features`` returns the five stage maps, finest first."""

    def __init__(self, config: HCTConfig) -> None:
        super().__init__()
        cfg = config
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, cfg.channels[0], 7, stride=2, padding=3, bias=False),
            nn.MaxPool2d(3, stride=2, padding=cfg.pool_padding),
        )
        self.stages = nn.ModuleList()
        c_in = cfg.channels[0]
        for i, (c_out, n, stride) in enumerate(zip(cfg.channels, cfg.blocks, cfg.strides)):
            blocks = []
            for b in range(n):
                first = b == 0
                args = (c_in if first else c_out, c_out, stride if first else 1, first)
                if i < cfg.num_conv_stages:
                    blocks.append(BasicBlockV2(*args))
                else:
                    blocks.append(ACBlock(*args, heads=cfg.heads, kernel=cfg.kernel, nb_features=cfg.nb_features,
                                          dropout=cfg.attention_dropout))
            self.stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.feature_channels = list(cfg.channels)
        self.feature_strides = cfg.feature_strides
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if min(x.shape[-2:]) < 8:
            raise HiresError(f"HCT needs inputs of at least 8 x 8 pixels, got {tuple(x.shape[-2:])}; use larger tiles")
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class HCTHead(nn.Module):
    """Classifier: final BatchNorm -> ReLU -> global average pool -> Linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.final_bn = nn.BatchNorm2d(channels)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.relu(self.final_bn(x)).mean(dim=(2, 3)))


def build_hct(config: HCTConfig) -> HiresModel:
    """An HCT classifier or segmenter (FPN head over the stage maps) as ``config.task`` says."""
    backbone = HCTBackbone(config)
    rf = config.receptive_fields()[-1]
    if config.task == "classification":
        return ClassificationModel(backbone, HCTHead(config.channels[-1], config.num_classes), config.num_classes,
                                   in_channels=config.in_channels, input_multiple=1, receptive_field=rf,
                                   halo=config.halo, config=config)
    return SegmentationModel(backbone, config.num_classes, in_channels=config.in_channels,
                             input_multiple=config.feature_strides[-1], receptive_field=rf, halo=config.halo,
                             decoder_width=config.decoder_width, config=config)


def _configure(base: dict, overrides: dict) -> HCTConfig:
    """``HCTConfig`` from a registered configuration plus user overrides, naming any unknown override."""
    return configure("hct", HCTConfig(**base), overrides)


_PUBLISHED = asdict(HCTConfig())
_TINY = dict(_PUBLISHED, in_channels=3, channels=(16, 32, 48, 64, 96), blocks=(1, 1, 1, 2, 1))


@register_model("hct_base", family="hct", task="classification", published=True,
                description="HCT as published: 1-channel mammograms, 2 classes, 1.74M parameters")
def hct_base(**overrides) -> HiresModel:
    """The published HCTBase classifier."""
    return build_hct(_configure(_PUBLISHED, overrides))


@register_model("hct_base_seg", family="hct", task="segmentation", published=True,
                description="published HCT backbone (RGB) with an FPN head for dense segmentation")
def hct_base_seg(**overrides) -> HiresModel:
    """The published backbone on RGB with aligned stage maps (pool padding 1) and an FPN segmentation head."""
    base = dict(_PUBLISHED, in_channels=3, pool_padding=1, task="segmentation")
    return build_hct(_configure(base, overrides))


@register_model("hct_tiny_seg", family="hct", task="segmentation",
                description="small HCT (RGB, 4 classes) with an FPN head, for 512x512 tiles on a CPU")
def hct_tiny_seg(**overrides) -> HiresModel:
    """A small RGB HCT segmenter for CPU demos and tests."""
    base = dict(_TINY, num_classes=4, pool_padding=1, task="segmentation", decoder_width=32)
    return build_hct(_configure(base, overrides))


@register_model("hct_tiny_cls", family="hct", task="classification",
                description="small HCT (RGB, 2 classes) classifying tiles, for CPU demos and tests")
def hct_tiny_cls(**overrides) -> HiresModel:
    """A small RGB HCT tile classifier for CPU demos and tests."""
    return build_hct(_configure(_TINY, overrides))
