"""MAXIM building blocks (Tu et al., CVPR 2022), channels-last (N, H, W, C) like the official Flax code.

Multi-axis gated MLP (MAB), gating units, channel-attention blocks (RCAB, RDCAB), cross-gating block (CGB),
supervised attention (SAM), resizing 1x1 projections, and the encoder / decoder / bottleneck blocks.
Initialisation follows the reference: MLP kernels N(0, 0.02), other dense and conv kernels LeCun normal,
biases zero except the CGB spatial gating layers (one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6


def _lecun_(weight: torch.Tensor, fan_in: int) -> None:
    """LeCun normal (truncated at two sigma), Flax's default kernel initialiser."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def dense(cin: int, cout: int, std: float | None = 0.02, bias: float = 0.0) -> nn.Linear:
    """A Linear layer with N(0, std) kernel (LeCun normal when std is None) and constant bias."""
    layer = nn.Linear(cin, cout)
    if std is None:
        _lecun_(layer.weight, cin)
    else:
        nn.init.normal_(layer.weight, std=std)
    nn.init.constant_(layer.bias, bias)
    return layer


def layer_norm(channels: int, eps: float = LN_EPS) -> nn.LayerNorm:
    """LayerNorm over the last (channel) axis."""
    return nn.LayerNorm(channels, eps=eps)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (Flax's default)."""
    return F.gelu(x, approximate="tanh")


class Conv(nn.Conv2d):
    """A 2-D convolution on channels-last tensors, 'SAME'-padded like Flax for the kernels MAXIM uses."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, padding=(kernel - stride + 1) // 2)
        _lecun_(self.weight, cin * kernel * kernel)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvUp(nn.ConvTranspose2d):
    """Transposed convolution 2x2 stride 2 on channels-last tensors: doubles height and width."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 2, stride=2)
        _lecun_(self.weight, cin * 4)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def block_images(x: torch.Tensor, fh: int, fw: int) -> torch.Tensor:
    """Rearrange ``n (gh fh) (gw fw) c -> n (gh gw) (fh fw) c``: patches of fh x fw along axis 2."""
    n, h, w, c = x.shape
    if h % fh or w % fw:
        raise ValueError(f"MAXIM needs feature maps divisible by {fh} x {fw}, got {h} x {w}; pad the input")
    gh, gw = h // fh, w // fw
    return x.reshape(n, gh, fh, gw, fw, c).permute(0, 1, 3, 2, 4, 5).reshape(n, gh * gw, fh * fw, c)


def unblock_images(x: torch.Tensor, gh: int, gw: int, fh: int, fw: int) -> torch.Tensor:
    """Inverse of :func:`block_images`: ``n (gh gw) (fh fw) c -> n (gh fh) (gw fw) c``."""
    n, _, _, c = x.shape
    return x.reshape(n, gh, gw, fh, fw, c).permute(0, 1, 3, 2, 4, 5).reshape(n, gh * fh, gw * fw, c)


def _patch(h: int, w: int, size: int, grid: bool) -> tuple[int, int]:
    """Patch height and width: h/size x w/size for a grid of size x size, size x size for a block."""
    if grid:
        if h % size or w % size:
            raise ValueError(f"MAXIM grid {size} needs feature maps divisible by {size}, got {h} x {w}; pad the input")
        return h // size, w // size
    return size, size


def _mix(x: torch.Tensor, layer: nn.Linear, axis: int) -> torch.Tensor:
    """Apply ``layer`` along token axis ``axis`` (-3 across patches, -2 within a patch)."""
    return layer(x.transpose(axis, -1)).transpose(axis, -1)


class GatingUnit(nn.Module):
    """gMLP spatial gating: split u, v; LayerNorm(v); Dense n -> n over the tokens; return u * (v + 1)."""

    def __init__(self, channels: int, tokens: int, axis: int, eps: float = LN_EPS) -> None:
        super().__init__()
        self.axis = axis
        self.norm = layer_norm(channels // 2, eps)
        self.spatial = dense(tokens, tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.chunk(2, dim=-1)
        return u * (_mix(self.norm(v), self.spatial, self.axis) + 1.0)


class AxisGmlp(nn.Module):
    """Grid gMLP (global, dilated: mixes the same pixel of a size x size grid of patches) or block gMLP (local)."""

    def __init__(self, channels: int, size: int, grid: bool, factor: int = 2, eps: float = LN_EPS) -> None:
        super().__init__()
        self.size, self.grid = size, grid
        hidden = channels * factor
        self.norm = layer_norm(channels, eps)
        self.in_proj = dense(channels, hidden)
        self.gate = GatingUnit(hidden, size * size, -3 if grid else -2, eps)
        self.out_proj = dense(hidden // 2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        fh, fw = _patch(h, w, self.size, self.grid)
        t = block_images(x, fh, fw)
        y = self.out_proj(self.gate(gelu(self.in_proj(self.norm(t)))))
        return unblock_images(t + y, h // fh, w // fw, fh, fw)


class MultiAxisGmlp(nn.Module):
    """MAB: LayerNorm, Dense C -> pC, GELU, half through grid gMLP and half through block gMLP, Dense -> C, residual."""

    def __init__(
        self, channels: int, block_size: int, grid_size: int, input_proj_factor: int = 2,
        block_factor: int = 2, grid_factor: int = 2, eps: float = LN_EPS,
    ) -> None:
        super().__init__()
        hidden = channels * input_proj_factor
        self.norm = layer_norm(channels, eps)
        self.in_proj = dense(channels, hidden)
        self.grid = AxisGmlp(hidden // 2, grid_size, True, grid_factor, eps)
        self.block = AxisGmlp(hidden // 2, block_size, False, block_factor, eps)
        self.out_proj = dense(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = gelu(self.in_proj(self.norm(x))).chunk(2, dim=-1)
        return x + self.out_proj(torch.cat([self.grid(u), self.block(v)], dim=-1))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global mean, 1x1 C -> C/r, ReLU, 1x1 -> C, sigmoid, rescale the input."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.squeeze = Conv(channels, channels // reduction)
        self.excite = Conv(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(1, 2), keepdim=True)
        return x * torch.sigmoid(self.excite(F.relu(self.squeeze(y))))


class RCAB(nn.Module):
    """Residual channel attention block: LayerNorm, conv3x3, LeakyReLU, conv3x3, channel attention, residual."""

    def __init__(self, channels: int, reduction: int = 4, lrelu_slope: float = 0.2, eps: float = LN_EPS) -> None:
        super().__init__()
        self.slope = lrelu_slope
        self.norm = layer_norm(channels, eps)
        self.conv1 = Conv(channels, channels, 3)
        self.conv2 = Conv(channels, channels, 3)
        self.attention = ChannelAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv1(self.norm(x)), self.slope)
        return x + self.attention(self.conv2(y))


class RDCAB(nn.Module):
    """Residual dense channel attention block (bottleneck): LayerNorm, MLP C -> C -> C, channel attention, residual."""

    def __init__(self, channels: int, reduction: int = 4, eps: float = LN_EPS) -> None:
        super().__init__()
        self.norm = layer_norm(channels, eps)
        self.fc1 = dense(channels, channels)
        self.fc2 = dense(channels, channels)
        self.attention = ChannelAttention(channels, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attention(self.fc2(gelu(self.fc1(self.norm(x)))))


class SpatialGatingWeights(nn.Module):
    """CGB gating weights: LayerNorm, Dense C -> pC, GELU, grid- and block-axis Dense (bias 1), Dense -> C."""

    def __init__(
        self, channels: int, block_size: int, grid_size: int, input_proj_factor: int = 2, eps: float = LN_EPS
    ) -> None:
        super().__init__()
        self.block_size, self.grid_size = block_size, grid_size
        hidden = channels * input_proj_factor
        self.norm = layer_norm(channels, eps)
        self.in_proj = dense(channels, hidden, std=None)
        self.grid_mix = dense(grid_size * grid_size, grid_size * grid_size, bias=1.0)
        self.block_mix = dense(block_size * block_size, block_size * block_size, bias=1.0)
        self.out_proj = dense(hidden, channels, std=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        u, v = gelu(self.in_proj(self.norm(x))).chunk(2, dim=-1)
        fh, fw = _patch(h, w, self.grid_size, True)
        u = unblock_images(_mix(block_images(u, fh, fw), self.grid_mix, -3), h // fh, w // fw, fh, fw)
        b = self.block_size
        v = unblock_images(_mix(block_images(v, b, b), self.block_mix, -2), h // b, w // b, b, b)
        return self.out_proj(torch.cat([u, v], dim=-1))


class CrossGatingBlock(nn.Module):
    """CGB(x, y): each signal gates the other through multi-axis spatial gating weights; returns (x', y')."""

    def __init__(
        self, x_channels: int, y_channels: int, features: int, block_size: int, grid_size: int,
        upsample_y: bool, input_proj_factor: int = 2, eps: float = LN_EPS,
    ) -> None:
        super().__init__()
        self.up = ConvUp(y_channels, features) if upsample_y else None
        self.conv_x = Conv(x_channels, features)
        self.conv_y = Conv(features if upsample_y else y_channels, features)
        self.norm_x, self.norm_y = layer_norm(features, eps), layer_norm(features, eps)
        self.in_x, self.in_y = dense(features, features, std=None), dense(features, features, std=None)
        self.gate_x = SpatialGatingWeights(features, block_size, grid_size, input_proj_factor, eps)
        self.gate_y = SpatialGatingWeights(features, block_size, grid_size, input_proj_factor, eps)
        self.out_x, self.out_y = dense(features, features, std=None), dense(features, features, std=None)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.up is not None:
            y = self.up(y)
        x, y = self.conv_x(x), self.conv_y(y)
        short_x, short_y = x, y
        x = gelu(self.in_x(self.norm_x(x)))
        y = gelu(self.in_y(self.norm_y(y)))
        gx, gy = self.gate_x(x), self.gate_y(y)
        y = self.out_y(y * gx) + short_y
        x = self.out_x(x * gy) + y + short_x
        return x, y


class SAM(nn.Module):
    """Supervised attention module: image = conv(x) + input; features = x + conv(x) * sigmoid(conv(image))."""

    def __init__(self, features: int, image_channels: int = 3) -> None:
        super().__init__()
        self.conv_feat = Conv(features, features, 3)
        self.conv_image = Conv(features, image_channels, 3)
        self.conv_attn = Conv(image_channels, features, 3)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        restored = self.conv_image(x) + image
        return x + self.conv_feat(x) * torch.sigmoid(self.conv_attn(restored)), restored


class UpSampleRatio(nn.Module):
    """Bilinear resize by ``ratio`` (antialiased when shrinking, as jax.image.resize) then a 1x1 conv."""

    def __init__(self, cin: int, cout: int, ratio: float) -> None:
        super().__init__()
        self.ratio = ratio
        self.proj = Conv(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ratio != 1:
            _, h, w, _ = x.shape
            size = (int(h * self.ratio), int(w * self.ratio))
            x = F.interpolate(
                x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False, antialias=self.ratio < 1
            ).permute(0, 2, 3, 1)
        return self.proj(x)


class _GroupedStage(nn.Module):
    """What the encoder, decoder and bottleneck blocks begin with: a 1x1 projection to ``features`` and the
    multi-axis gMLP block of each of their groups."""

    def __init__(self, cin: int, features: int, block_size: int, grid_size: int, num_groups: int,
                 input_proj_factor: int, block_factor: int, grid_factor: int, eps: float) -> None:
        super().__init__()
        self.proj = Conv(cin, features)
        self.mabs = nn.ModuleList(
            MultiAxisGmlp(features, block_size, grid_size, input_proj_factor, block_factor, grid_factor, eps)
            for _ in range(num_groups)
        )


def _residual_groups(x: torch.Tensor, mabs: nn.ModuleList, cabs: nn.ModuleList) -> torch.Tensor:
    """Groups of [multi-axis gMLP, channel attention] under one long residual connection."""
    shortcut = x
    for mab, cab in zip(mabs, cabs):
        x = cab(mab(x))
    return x + shortcut


class EncoderBlock(_GroupedStage):
    """Conv1x1 to ``features``, groups x [MAB, RCAB], long residual, optional CGB with the previous stage, downsample.

    Returns ``(down, bridge)`` when downsampling (conv 4x4 stride 2), else the block output.
    """

    def __init__(
        self, cin: int, features: int, block_size: int, grid_size: int, num_groups: int = 2,
        downsample: bool = True, cross_gating: bool = False, lrelu_slope: float = 0.2, block_factor: int = 2,
        grid_factor: int = 2, input_proj_factor: int = 2, reduction: int = 4, eps: float = LN_EPS,
    ) -> None:
        super().__init__(cin, features, block_size, grid_size, num_groups, input_proj_factor, block_factor,
                         grid_factor, eps)
        self.rcabs = nn.ModuleList(RCAB(features, reduction, lrelu_slope, eps) for _ in range(num_groups))
        self.cross = (
            CrossGatingBlock(features, features, features, block_size, grid_size, False, input_proj_factor, eps)
            if cross_gating else None
        )
        self.down = Conv(features, features, 4, 2) if downsample else None

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, prev: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``skip`` is concatenated to the input; ``prev`` (previous stage's enc + dec) feeds the CGB."""
        if skip is not None:
            x = torch.cat([x, skip], dim=-1)
        x = _residual_groups(self.proj(x), self.mabs, self.rcabs)
        if self.cross is not None:
            x, _ = self.cross(x, prev)
        if self.down is None:
            return x
        return self.down(x), x


class DecoderBlock(nn.Module):
    """ConvTranspose 2x2 up to ``features``, then an encoder block (no downsampling) with the skip signal."""

    def __init__(self, cin: int, skip_channels: int, features: int, block_size: int, grid_size: int, **kw) -> None:
        super().__init__()
        self.up = ConvUp(cin, features)
        self.block = EncoderBlock(features + skip_channels, features, block_size, grid_size, downsample=False, **kw)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(self.up(x), skip)


class BottleneckBlock(_GroupedStage):
    """Conv1x1, groups x [MAB, RDCAB], long residual."""

    def __init__(
        self, cin: int, features: int, block_size: int, grid_size: int, num_groups: int = 2, block_factor: int = 2,
        grid_factor: int = 2, input_proj_factor: int = 2, reduction: int = 4, eps: float = LN_EPS,
    ) -> None:
        super().__init__(cin, features, block_size, grid_size, num_groups, input_proj_factor, block_factor,
                         grid_factor, eps)
        self.rdcabs = nn.ModuleList(RDCAB(features, reduction, eps) for _ in range(num_groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _residual_groups(self.proj(x), self.mabs, self.rdcabs)
