"""A restoration model small enough for widget tests on a CPU (importable from every test module)."""

import torch

from napari_hires.models.base import HiresModel


class TinyRestorer(HiresModel):
    """Two 3x3 convolutions added to the input: a receptive radius of 2 px, so a halo of 4 makes tiling exact.

    Seeded, so that every instance has the same weights.
    """

    task = "restoration"
    in_channels = out_channels = 3
    halo = 4
    tile_size = 128

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                       torch.nn.Conv2d(8, 3, 3, padding=1))

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.5 * self.net(x)
