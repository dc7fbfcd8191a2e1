"""What every napari-hires model promises the engine: its task, channels, input multiple, halo, and padding."""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Mapping, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from napari_hires.errors import HiresError

if TYPE_CHECKING:
    from napari_hires.models.card import ModelCard

Task = Literal["segmentation", "classification", "restoration"]
ConfigT = TypeVar("ConfigT")


def configure(name: str, base: ConfigT, overrides: dict[str, Any], *, fixed: tuple[str, ...] = ("task",),
              note: str = "") -> ConfigT:
    """``base`` (a config dataclass) with ``overrides`` applied, or an error naming the options a user may set."""
    valid = {f.name for f in fields(base)} - set(fixed)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        fixed_note = f" ({', '.join(fixed)} is fixed by the model name)" if set(unknown) & set(fixed) else ""
        raise HiresError(f"unknown option(s) {', '.join(unknown)} for model {name!r}{fixed_note}{note}; "
                         f"valid options: {', '.join(sorted(valid))}")
    return replace(base, **overrides)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad the last two axes of ``x`` at the bottom/right to a multiple of ``multiple``; returns (padded, (h, w))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        # reflect needs pad < size; fall back to replicate for tiny inputs
        use = mode if (mode != "reflect" or (ph < h and pw < w)) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=use)
    return x, (h, w)


class Backbone(nn.Module):
    """A feature extractor: ``forward_features`` returns one map per stage, finest first."""

    feature_channels: list[int]
    feature_strides: list[int]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


class HiresModel(nn.Module):
    """Base of the product's models: ``forward`` pads any H x W to the model's multiple and crops back.

    Subclasses implement ``forward_padded`` on inputs whose H and W are multiples of ``input_multiple`` and set:
    ``task``, ``in_channels``, ``out_channels`` (classes, or image channels for restoration), ``input_multiple``,
    ``receptive_field`` (pixels of input one output pixel depends on, roughly) and ``halo`` (recommended tile overlap
    per side in input pixels for seam-free tiling), and keep their configuration dataclass in ``config``.
    ``tile_size`` is the tile the engine uses unless told otherwise (xT: a window of regions).

    What a model is, :func:`napari_hires.models.create_model` declares (a model built by hand keeps the defaults,
    "not known"): ``architecture`` (the registered name that rebuilds it with ``overrides``), ``tag`` (its trained
    weights, as in ``hct_tiny_seg.synthetic``), ``card`` (of the file its weights came from) and ``trained``.
    """

    task: Task
    in_channels: int
    out_channels: int
    input_multiple: int = 1
    receptive_field: int = 0
    halo: int = 0
    tile_size: int = 512
    config: Any = None
    architecture: str | None = None
    overrides: Mapping[str, Any] = MappingProxyType({})
    tag: str | None = None
    card: ModelCard | None = None
    #: True: trained weights (a tag, a model file, a training run); False: an architecture's random initialisation.
    trained: bool | None = None
    #: Where a pretrained backbone came from (``create_model(..., encoder=...)``), for the card; None: no encoder.
    encoder: Mapping[str, Any] | None = None

    @property
    def name(self) -> str | None:
        """The registered name that gives this model again: ``architecture`` or ``architecture.tag``."""
        if self.architecture is None:
            return None
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise HiresError(
                f"{type(self).__name__} expects a (batch, {self.in_channels}, height, width) tensor, "
                f"got shape {tuple(x.shape)}"
            )
        padded, (h, w) = pad_to_multiple(x, self.input_multiple)
        out = self.forward_padded(padded)
        if self.task == "classification":
            return out
        return out[..., :h, :w]

    @property
    def tiling_rule(self) -> str:
        """How the engine should tile this model, in a sentence for the model card."""
        return getattr(self, "_tiling_rule", None) or (
            f"tiles of {self.tile_size} px (a multiple of {self.input_multiple}); neighbouring tiles overlap by "
            f"2 x halo = {2 * self.halo} px of distrusted context (the receptive field reaches about "
            f"{self.receptive_field // 2} px) plus a cross-fade"
        )

    @tiling_rule.setter
    def tiling_rule(self, text: str) -> None:
        self._tiling_rule = text

    def describe(self) -> dict[str, Any]:
        """The facts the engine and the model card need, as plain JSON-able values."""
        return {
            "architecture": type(self).__name__,
            "task": self.task,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "input_multiple": self.input_multiple,
            "receptive_field": self.receptive_field,
            "halo": self.halo,
            "tile_size": self.tile_size,
            "tiling": self.tiling_rule,
            "config": asdict(self.config) if is_dataclass(self.config) else self.config,
        }


def count_parameters(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())
