"""MAXIM: multi-axis MLP for image restoration (Tu et al., CVPR 2022), following the official Flax model.

A multi-stage, multi-scale UNet of multi-axis gated MLP blocks with cross-gating skips and supervised attention
between stages. ``forward_all`` returns ``outputs[stage][scale]`` (scales coarse to fine: H/4, H/2, H for three
supervision scales); ``forward`` returns the final full-resolution restoration ``outputs[-1][-1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import lcm
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel, configure, pad_to_multiple
from napari_hires.models.maxim_blocks import (
    SAM,
    BottleneckBlock,
    Conv,
    CrossGatingBlock,
    DecoderBlock,
    EncoderBlock,
    UpSampleRatio,
)
from napari_hires.models.registry import register_model

_FAMILY = "maxim"


@dataclass(frozen=True)
class MAXIMConfig:
    """Hyper-parameters of MAXIM; defaults are the published S-3 (22.2M params, three supervision scales).

    Level i of the UNet has ``features * 2**i`` channels at H / 2**i. Levels below ``high_res_levels`` use
    ``block_size_hr`` / ``grid_size_hr``; deeper levels and the bottleneck use the ``_lr`` sizes (the reference code
    passes ``block_size_lr`` as the low-resolution grid size; the published values are equal).

    Input multiple: level i needs H / 2**i divisible by its block and grid sizes, and the bottleneck H / 2**depth
    by the low-resolution ones, so ``input_multiple`` is the lcm of ``2**i * lcm(block, grid)`` over the levels and
    the bottleneck: 64 for S-3 / S-2 and for ``maxim_nano``. ``forward`` reflect-pads to it and crops back.

    Receptive field and halo: the grid gMLP mixes pixels a tile-size / grid apart across the whole padded tile, so
    every output pixel depends on the entire tile (global receptive field) and tiling is never exactly seam-free.
    The dense part is set by the bottleneck's block window, ``w = block_size_lr * 2**depth`` input pixels (64 at the
    published sizes). ``receptive_field`` reports ``2 * w``; ``halo`` defaults to 64 px per side (``w`` for every
    registered model). Measured once on ``maxim_nano`` with random weights: 87% of the input-gradient mass of a
    centre output pixel of a 256 px image lies within +-64 px; on a 384 px image, 128 px tiles with a 0 / 32 / 64 /
    96 px halo differ from whole-image output by 23% / 3% / 2.2% / 1.8% of the output's mean deviation from the
    input, so returns flatten from 32-64 px on.
    """

    features: int = 32
    depth: int = 3
    num_stages: int = 3
    num_groups: int = 2
    num_bottleneck_blocks: int = 2
    num_supervision_scales: int = 3
    high_res_levels: int = 2
    block_size_hr: int = 16
    grid_size_hr: int = 16
    block_size_lr: int = 8
    grid_size_lr: int = 8
    block_gmlp_factor: int = 2
    grid_gmlp_factor: int = 2
    input_proj_factor: int = 2
    channels_reduction: int = 4
    lrelu_slope: float = 0.2
    layer_norm_eps: float = 1e-6
    in_channels: int = 3
    halo: int = 64

    def __post_init__(self) -> None:
        if self.depth < 1 or self.num_stages < 1 or self.num_groups < 1 or self.num_bottleneck_blocks < 1:
            raise HiresError(
                "MAXIM needs depth, num_stages, num_groups and num_bottleneck_blocks of at least 1, got "
                f"{self.depth}, {self.num_stages}, {self.num_groups}, {self.num_bottleneck_blocks}"
            )
        if not 1 <= self.num_supervision_scales <= self.depth:
            raise HiresError(
                f"MAXIM num_supervision_scales must be between 1 and depth ({self.depth}), "
                f"got {self.num_supervision_scales}"
            )
        if self.features % self.channels_reduction:
            raise HiresError(
                f"MAXIM features ({self.features}) must be a multiple of channels_reduction ({self.channels_reduction})"
            )
        if min(self.block_size_hr, self.grid_size_hr, self.block_size_lr, self.grid_size_lr, self.in_channels) < 1:
            raise HiresError("MAXIM block and grid sizes and in_channels must be at least 1")

    def sizes(self, level: int) -> tuple[int, int]:
        """(block size, grid size) of UNet ``level``; ``level == depth`` is the bottleneck."""
        if level < min(self.high_res_levels, self.depth):
            return self.block_size_hr, self.grid_size_hr
        return self.block_size_lr, self.grid_size_lr

    @property
    def input_multiple(self) -> int:
        """Smallest multiple of H and W for which every block and grid partition is exact."""
        return lcm(*(2**i * lcm(*self.sizes(i)) for i in range(self.depth + 1)))

    @property
    def receptive_field(self) -> int:
        """Twice the bottleneck's block window in input pixels: the bulk of the dense part; the grid part is global."""
        return 2 * self.block_size_lr * 2**self.depth


class MAXIMStage(nn.Module):
    """One stage: multi-scale input convs (fused with the previous stage's SAM features), encoder, bottleneck,
    cross-gated multi-scale skips, decoder, and per-scale outputs (SAM unless last stage)."""

    def __init__(self, cfg: MAXIMConfig, first: bool, last: bool) -> None:
        super().__init__()
        d, s = cfg.depth, cfg.num_supervision_scales
        w = [cfg.features * 2**i for i in range(d)]
        eps, proj = cfg.layer_norm_eps, cfg.input_proj_factor
        mlp = dict(
            num_groups=cfg.num_groups, block_factor=cfg.block_gmlp_factor, grid_factor=cfg.grid_gmlp_factor,
            input_proj_factor=proj, reduction=cfg.channels_reduction, eps=eps,
        )
        kw = dict(mlp, lrelu_slope=cfg.lrelu_slope)
        self.last = last
        self.input_convs = nn.ModuleList(Conv(cfg.in_channels, w[i], 3) for i in range(s))
        self.input_fuse = None if first else nn.ModuleList(
            CrossGatingBlock(w[i], w[i], w[i], *cfg.sizes(i), False, proj, eps) for i in range(s)
        )
        self.encoders = nn.ModuleList(
            EncoderBlock(
                w[max(i - 1, 0)] + (w[i] if i < s else 0), w[i], *cfg.sizes(i), downsample=True,
                cross_gating=not first, **kw,
            )
            for i in range(d)
        )
        self.bottleneck = nn.ModuleList(
            BottleneckBlock(w[-1], w[-1], *cfg.sizes(d), **mlp) for _ in range(cfg.num_bottleneck_blocks)
        )
        # resize_*[i][j]: level j's features brought to level i's size and width
        self.resize_enc = nn.ModuleList(
            nn.ModuleList(UpSampleRatio(w[j], w[i], 2.0 ** (j - i)) for j in range(d)) for i in range(d)
        )
        self.skip_gates = nn.ModuleList(
            CrossGatingBlock(d * w[i], w[min(i + 1, d - 1)], w[i], *cfg.sizes(i), True, proj, eps) for i in range(d)
        )
        self.resize_skip = nn.ModuleList(
            nn.ModuleList(UpSampleRatio(w[j], w[i], 2.0 ** (j - i)) for j in range(d)) for i in range(d)
        )
        self.decoders = nn.ModuleList(
            DecoderBlock(w[min(i + 1, d - 1)], d * w[i], w[i], *cfg.sizes(i), **kw) for i in range(d)
        )
        self.heads = nn.ModuleList(
            Conv(w[i], cfg.in_channels, 3) if last else SAM(w[i], cfg.in_channels) for i in range(s)
        )

    def forward(
        self, images: list[torch.Tensor], prev: tuple[list[torch.Tensor], ...] | None
    ) -> tuple[list[torch.Tensor], tuple[list[torch.Tensor], ...]]:
        """``images`` per scale (NHWC, finest first); ``prev`` = previous stage's (SAM features, encs, decs).

        Returns the per-scale restorations (coarsest first) and this stage's (SAM features, encs, decs).
        """
        feats = []
        for i, conv in enumerate(self.input_convs):
            f = conv(images[i])
            if prev is not None:
                f, _ = self.input_fuse[i](f, prev[0][i])
            feats.append(f)

        x, encs = feats[0], []
        for i, encoder in enumerate(self.encoders):
            skip = feats[i] if i < len(feats) else None
            x, bridge = encoder(x, skip, None if prev is None else prev[1][i] + prev[2][i])
            encs.append(bridge)
        for block in self.bottleneck:
            x = block(x)

        depth = len(encs)
        gate, skips = x, [None] * depth
        for i in reversed(range(depth)):
            signal = torch.cat([resize(e) for resize, e in zip(self.resize_enc[i], encs)], dim=-1)
            skips[i], gate = self.skip_gates[i](signal, gate)

        outputs, decs, sams = [], [None] * depth, [None] * len(images)
        for i in reversed(range(depth)):
            signal = torch.cat([self.resize_skip[i][j](skips[j]) for j in reversed(range(depth))], dim=-1)
            x = decs[i] = self.decoders[i](x, signal)
            if i < len(images):
                if self.last:
                    outputs.append(self.heads[i](x) + images[i])
                else:
                    sams[i], restored = self.heads[i](x, images[i])
                    outputs.append(restored)
        return outputs, (sams, encs, decs)


class MAXIM(HiresModel):
    """MAXIM restoration model: image in, restored image (same channels) out, at any size via reflect padding."""

    task = "restoration"

    def __init__(self, config: MAXIMConfig) -> None:
        super().__init__()
        self.config = config
        self.in_channels = self.out_channels = config.in_channels
        self.input_multiple = config.input_multiple
        self.receptive_field = config.receptive_field
        self.halo = config.halo
        n = config.num_stages
        self.stages = nn.ModuleList(MAXIMStage(config, s == 0, s == n - 1) for s in range(n))

    def _run(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """All stages on an NCHW input whose size is a multiple of ``input_multiple``."""
        x = x.permute(0, 2, 3, 1)
        # nearest-neighbour downscales as jax.image.resize: pixel floor((k + 0.5) * f) for output k
        images = [x] + [
            x[:, f // 2 :: f, f // 2 :: f] for f in (2**i for i in range(1, self.config.num_supervision_scales))
        ]
        prev, outputs = None, []
        for stage in self.stages:
            outs, prev = stage(images, prev)
            outputs.append([o.permute(0, 3, 1, 2) for o in outs])
        return outputs

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)[-1][-1]

    def forward_all(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """``outputs[stage][scale]`` for an N x C x H x W input, scales coarse to fine (H/4, H/2, H), for training."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"MAXIM expects a (batch, {self.in_channels}, height, width) tensor, got {tuple(x.shape)}")
        padded, (h, w) = pad_to_multiple(x, self.input_multiple)
        outputs = self._run(padded)
        full = padded.shape[-1]
        return [[o[..., : -(-h * o.shape[-1] // full), : -(-w * o.shape[-1] // full)] for o in s] for s in outputs]


def maxim_loss(
    outputs: list[list[torch.Tensor]], target: torch.Tensor, eps: float = 1e-3, fft_weight: float = 0.1
) -> torch.Tensor:
    """MAXIM training loss: sum over stages and scales of Charbonnier + ``fft_weight`` * L1 of the FFT difference.

    The target is bilinearly resized (antialiased) to each output's size. Charbonnier is mean(sqrt(d^2 + eps^2));
    the frequency term is the mean absolute difference of the real and imaginary parts of the 2-D FFTs.
    """
    finest = outputs[-1][-1]
    if target.shape != finest.shape:
        raise ValueError(
            f"maxim_loss needs a target shaped like the full-resolution output {tuple(finest.shape)}, "
            f"got {tuple(target.shape)}"
        )
    total = target.new_zeros(())
    for stage in outputs:
        for pred in stage:
            t = target
            if pred.shape[-2:] != target.shape[-2:]:
                t = F.interpolate(target, size=pred.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
            charbonnier = torch.sqrt((pred - t) ** 2 + eps**2).mean()
            spectrum = torch.view_as_real(torch.fft.fft2(pred.float()) - torch.fft.fft2(t.float()))
            total = total + charbonnier + fft_weight * spectrum.abs().mean()
    return total


def _configure(name: str, base: MAXIMConfig, overrides: dict[str, Any]) -> MAXIMConfig:
    """``base`` with ``overrides`` applied (restoration models output as many channels as they take in)."""
    return configure(name, base, overrides, fixed=(),
                     note=" (restoration models output as many channels as they take in)")


def _builder(name: str, base: MAXIMConfig):
    """A registry builder ``(**overrides) -> MAXIM`` for ``base``."""

    def builder(**overrides: Any) -> MAXIM:
        return MAXIM(_configure(name, base, overrides))

    builder.__name__ = name
    return builder


_S3 = MAXIMConfig()
_S2 = replace(_S3, num_stages=2)
_NANO = replace(
    _S3, features=12, num_stages=2, num_groups=1, num_bottleneck_blocks=1, block_size_hr=8, grid_size_hr=8,
)

for _name, _base, _published, _desc in (
    ("maxim_3s", _S3, True, "MAXIM-3S as published (denoising, deblurring): 3 stages, F=32, 22.2M params"),
    ("maxim_2s", _S2, True, "MAXIM-2S as published (deraining, dehazing, enhancement): 2 stages, F=32, 14.2M params"),
    ("maxim_nano", _NANO, False, "Small MAXIM (2 stages, F=12, one group, block/grid 8) for 256-512 px tiles on a CPU"),
):
    register_model(_name, family=_FAMILY, task="restoration", description=_desc, published=_published)(
        _builder(_name, _base)
    )
