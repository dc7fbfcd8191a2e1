"""Task heads over any :class:`Backbone`: a light FPN decoder for dense segmentation and a pooled classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_hires.models.base import Backbone, HiresModel


class SegmentationDecoder(nn.Module):
    """FPN-style top-down fusion of the backbone stages, then logits upsampled to input resolution.

    Kept light on purpose (one width for every level) so that the backbone, not the head, dominates cost.
    """

    def __init__(self, feature_channels: list[int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in feature_channels)
        self.smooth = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for lateral, feat in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            x = lateral(feat) + F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.smooth(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class SegmentationModel(HiresModel):
    """Dense per-pixel class logits (B, classes, H, W) from a backbone and an FPN decoder."""

    task = "segmentation"

    def __init__(self, backbone: Backbone, num_classes: int, *, in_channels: int, input_multiple: int,
                 receptive_field: int, halo: int, decoder_width: int = 64, config=None) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = SegmentationDecoder(backbone.feature_channels, num_classes, decoder_width)
        self.in_channels, self.out_channels = in_channels, num_classes
        self.input_multiple, self.receptive_field, self.halo = input_multiple, receptive_field, halo
        self.config = config

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone.forward_features(x), x.shape[-2:])


class ClassificationModel(HiresModel):
    """Per-tile (or per-region) class logits (B, classes) from a backbone's last stage; a heatmap when tiled."""

    task = "classification"

    def __init__(self, backbone: Backbone, head: nn.Module, num_classes: int, *, in_channels: int,
                 input_multiple: int, receptive_field: int, halo: int = 0, config=None) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.in_channels, self.out_channels = in_channels, num_classes
        self.input_multiple, self.receptive_field, self.halo = input_multiple, receptive_field, halo
        self.config = config

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.forward_features(x)[-1])
