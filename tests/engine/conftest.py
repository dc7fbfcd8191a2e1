"""Shared pieces of the engine tests: a convolutional model with a known receptive field, and test images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_hires.models.base import HiresModel


class ConvNet(HiresModel):
    """Six 3x3 convolutions: receptive radius 6 px, so a halo of 6 makes tiling exact."""

    def __init__(self, task: str = "segmentation", in_channels: int = 3, out_channels: int = 4, depth: int = 6):
        super().__init__()
        self.task = task
        self.in_channels, self.out_channels, self.input_multiple = in_channels, out_channels, 1
        self.receptive_field, self.halo, self.tile_size = 2 * depth + 1, depth, 128
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(in_channels if i == 0 else 16, 16, 3, padding=1), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(16, out_channels, 1))
        if task == "classification":
            self.body.append(nn.AdaptiveAvgPool2d(1))
            self.body.append(nn.Flatten())

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture
def conv_model() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet().eval()


@pytest.fixture(scope="session")
def rgb_image() -> np.ndarray:
    """A textured 300 x 517 RGB image: sizes that no tile divides."""
    from napari_hires.io.synthetic import render_region

    return render_region(0, 4000, 4300, 6000, 6517, size=(16384, 16384))
