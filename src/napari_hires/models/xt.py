"""xT (Gupta et al., 2024): nested tokenization of a large window into regions, a region encoder, a context encoder.

Follows /work/shared/models/SPEC.md section 4 (official bair-climate-initiative/xT and its pre-release streaming
form). The window is cut into R x R regions; each region goes through a MaxViT or HCT backbone; the coarsest stage's
tokens go through a causal LLaMA-style context encoder (full sequence, or streamed region by region with
Transformer-XL memory), which either adds context back to the coarsest stage (segmentation) or feeds a CLS token to
a LayerNorm + Linear head (classification).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models.base import Backbone, HiresModel, configure
from napari_hires.models.context_encoder import ContextEncoder, Memory, grid_coords
from napari_hires.models.hct import HCTBackbone, HCTConfig
from napari_hires.models.heads import SegmentationModel
from napari_hires.models.maxvit import MaxViTBackbone, MaxViTConfig
from napari_hires.models.registry import register_model

_FAMILY = "xt"
_TASKS = ("classification", "segmentation")
_CONTEXT_MODES = ("full", "streaming")
_ORDERS = ("row", "zigzag")


@dataclass(frozen=True)
class XTConfig:
    """Hyper-parameters of an xT model; defaults are the published context encoder on a MaxViT-T (P=8) region encoder.

    Regions: ``region_size`` R is the region encoder's input side; inputs are padded to multiples of R (any
    n_h x n_w grid). ``region_encoder`` is "maxvit" or "hct", built from ``region_encoder_args`` (fields of
    :class:`MaxViTConfig` / :class:`HCTConfig`; channels come from ``in_channels``).

    Context encoder: ``hidden``/``depth``/``num_heads`` (None = hidden // 128, as released)/``mlp_hidden``.
    ``context`` = "full" (exact causal attention over every coarse token in global raster order, as released) or
    "streaming" (regions in ``region_order``, each attending to its own tokens causally and to a detached memory of
    the ``mem_chip - 1`` previous regions; ``two_stream`` first runs a memory-only pass over every region so that
    early regions also see late ones). Streaming holds a bounded number of regions' activations per step.

    Tiling (how the engine should choose window and halo): the tile is a large window of regions, recommended
    ``window_regions`` x ``window_regions`` regions (8 x 8 = 2048 px at R = 256), and every output depends on the
    whole window, so ``receptive_field = window_regions * R``. Segmentation uses ``halo = R`` per side: the outermost
    ring of regions, which lacks context on one side and whose region-encoder receptive field is cut by the tile
    edge, is overlapped and blended away. Classification gives one label per window and needs no halo.
    """

    task: str = "classification"
    in_channels: int = 3
    num_classes: int = 284
    region_size: int = 256
    region_encoder: str = "maxvit"
    region_encoder_args: dict[str, Any] = field(
        default_factory=lambda: {"window_size": 8, "out_indices": (1, 2, 3, 4)}
    )
    hidden: int = 768
    depth: int = 2
    num_heads: int | None = None
    mlp_hidden: int = 3072
    context: str = "full"
    mem_chip: int = 4
    region_order: str = "row"
    two_stream: bool = False
    decoder_width: int = 64
    window_regions: int = 8

    def __post_init__(self) -> None:
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(self.region_encoder_args).items()}
        object.__setattr__(self, "region_encoder_args", args)  # JSON cards give lists back for tuples
        problems = []
        if self.task not in _TASKS:
            problems.append(f"task must be one of {_TASKS}, not {self.task!r}")
        if self.context not in _CONTEXT_MODES:
            problems.append(f"context must be one of {_CONTEXT_MODES}, not {self.context!r}")
        if self.region_order not in _ORDERS:
            problems.append(f"region_order must be one of {_ORDERS}, not {self.region_order!r}")
        if self.region_encoder not in _REGION_ENCODERS:
            problems.append(f"region_encoder must be one of {sorted(_REGION_ENCODERS)}, not {self.region_encoder!r}")
        if self.mem_chip < 1:
            problems.append(f"mem_chip counts the current region so must be >= 1, not {self.mem_chip}")
        if self.hidden % 4:
            problems.append(f"hidden must be a multiple of 4 (2D sin-cos embedding), not {self.hidden}")
        if problems:
            raise HiresError("invalid xT configuration: " + "; ".join(problems) + ".")

    @property
    def halo(self) -> int:
        """Recommended tile overlap per side: one region for segmentation, none for per-window classification."""
        return self.region_size if self.task == "segmentation" else 0


def _maxvit(in_channels: int, args: dict[str, Any]) -> tuple[Backbone, int]:
    cfg = MaxViTConfig(**{**args, "in_channels": in_channels})
    return MaxViTBackbone(cfg), cfg.input_multiple


def _hct(in_channels: int, args: dict[str, Any]) -> tuple[Backbone, int]:
    cfg = HCTConfig(**{"pool_padding": 1, **args, "in_channels": in_channels, "task": "segmentation"})
    return HCTBackbone(cfg), cfg.feature_strides[-1]


# family -> (in_channels, args) -> (backbone, side multiple it needs)
_REGION_ENCODERS: dict[str, Callable[[int, dict[str, Any]], tuple[Backbone, int]]] = {"maxvit": _maxvit, "hct": _hct}


def build_region_encoder(cfg: XTConfig) -> Backbone:
    """The region encoder the config names, checked to accept R x R regions."""
    try:
        backbone, multiple = _REGION_ENCODERS[cfg.region_encoder](cfg.in_channels, dict(cfg.region_encoder_args))
    except TypeError as err:
        raise HiresError(f"bad region_encoder_args for {cfg.region_encoder}: {err}") from None
    if cfg.region_size % multiple:
        raise HiresError(
            f"region_size {cfg.region_size} does not suit the {cfg.region_encoder} region encoder, which needs a "
            f"multiple of {multiple}; choose region_size = k * {multiple}"
        )
    return backbone


def region_grid(x: torch.Tensor, region_size: int) -> tuple[int, int]:
    """(n_h, n_w) regions of side ``region_size`` in ``x``, or a clear error if the sides are not multiples."""
    h, w = x.shape[-2:]
    if h % region_size or w % region_size:
        raise HiresError(f"xT needs height and width that are multiples of the region size {region_size}, got "
                         f"{h} x {w}; pad the input (the model itself pads any size)")
    return h // region_size, w // region_size


def tokenize(x: torch.Tensor, region_size: int) -> torch.Tensor:
    """(B, C, n_h*R, n_w*R) -> (B*n_h*n_w, C, R, R): regions row-major within each image."""
    nh, nw = region_grid(x, region_size)
    b, c = x.shape[:2]
    x = x.reshape(b, c, nh, region_size, nw, region_size).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * nh * nw, c, region_size, region_size)


def untokenize(regions: torch.Tensor, n_h: int, n_w: int) -> torch.Tensor:
    """(B*n_h*n_w, C, h, w) per-region maps -> (B, C, n_h*h, n_w*w): the exact inverse of :func:`tokenize`."""
    _, c, h, w = regions.shape
    x = regions.reshape(-1, n_h, n_w, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, c, n_h * h, n_w * w)


def region_order(n_h: int, n_w: int, order: str = "row") -> list[tuple[int, int]]:
    """Streaming order of the regions: row-major, or zig-zag (odd rows right to left)."""
    rows = (range(n_w - 1, -1, -1) if order == "zigzag" and i % 2 else range(n_w) for i in range(n_h))
    return [(i, j) for i, cols in enumerate(rows) for j in cols]


class XTBackbone(Backbone):
    """Nested tokenization + region encoder + context encoder; ``forward_features`` gives stitched stage maps.

    In segmentation models the context is projected back and added to the coarsest map; classification models
    take the CLS state from :meth:`encode` instead.
    """

    def __init__(self, cfg: XTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.region_encoder = build_region_encoder(cfg)
        self.feature_channels = list(self.region_encoder.feature_channels)
        self.feature_strides = list(self.region_encoder.feature_strides)
        self.context = ContextEncoder(
            self.feature_channels[-1], cfg.hidden, cfg.depth, cfg.num_heads, cfg.mlp_hidden, cfg.mem_chip,
            cls_token=cfg.task == "classification", out_proj=cfg.task == "segmentation",
        )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encode(x)[0]

    def encode(self, x: torch.Tensor, with_cls: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Stitched stage maps (context added to the coarsest when projecting back) and the CLS state if asked."""
        if self.config.context == "streaming":
            return self._encode_streaming(x, with_cls)
        nh, nw = region_grid(x, self.config.region_size)
        feats = self.region_encoder.forward_features(tokenize(x, self.config.region_size))
        maps = [untokenize(f, nh, nw) for f in feats]
        h, w = maps[-1].shape[-2:]
        hidden = self.context(maps[-1].flatten(2).transpose(1, 2), grid_coords(h, w, device=x.device), with_cls)
        maps[-1] = self._with_context(maps[-1], hidden)
        return maps, hidden[:, -1] if with_cls else None

    def _with_context(self, coarse: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The coarsest map plus its tokens' context projected back (segmentation); unchanged for classification."""
        if self.context.output_proj is None:
            return coarse
        b, c, h, w = coarse.shape
        return coarse + self.context.output_proj(hidden[:, : h * w]).transpose(1, 2).reshape(b, c, h, w)

    def region_step(self, x: torch.Tensor, i: int, j: int, memory: Memory | None,
                    append_cls: bool = False) -> tuple[list[torch.Tensor], torch.Tensor | None, Memory]:
        """One streaming step on region (i, j) of ``x``: its stage maps with context, the CLS state, new memory.

        Training loops may call this per region and backpropagate per step, carrying the (detached) memory along.
        """
        r = self.config.region_size
        feats = self.region_encoder.forward_features(x[..., i * r:(i + 1) * r, j * r:(j + 1) * r])
        h, w = feats[-1].shape[-2:]
        coords = grid_coords(h, w, i * h, j * w, device=x.device)
        hidden, memory = self.context.step(feats[-1].flatten(2).transpose(1, 2), coords, memory, append_cls)
        feats = [*feats[:-1], self._with_context(feats[-1], hidden)]
        return feats, hidden[:, -1] if append_cls else None, memory

    def _encode_streaming(self, x: torch.Tensor, with_cls: bool) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        nh, nw = region_grid(x, self.config.region_size)
        order = region_order(nh, nw, self.config.region_order)
        memory: Memory | None = None
        if self.config.two_stream:
            with torch.no_grad():
                for i, j in order:
                    memory = self.region_step(x, i, j, memory)[2]
        maps: list[torch.Tensor] = []
        cls = None
        for k, (i, j) in enumerate(order):
            feats, cls, memory = self.region_step(x, i, j, memory, with_cls and k == len(order) - 1)
            if not maps:
                maps = [f.new_zeros(f.shape[0], f.shape[1], nh * f.shape[2], nw * f.shape[3]) for f in feats]
            for m, f in zip(maps, feats):
                h, w = f.shape[-2:]
                m[..., i * h:(i + 1) * h, j * w:(j + 1) * w] = f
        return maps, cls


class XTClassifier(HiresModel):
    """Window-level class logits (B, classes): the context encoder's CLS state -> LayerNorm -> Linear."""

    task = "classification"

    def __init__(self, cfg: XTConfig) -> None:
        super().__init__()
        self.backbone = XTBackbone(cfg)
        self.head = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, cfg.num_classes))
        self.in_channels, self.out_channels = cfg.in_channels, cfg.num_classes
        self.input_multiple, self.halo = cfg.region_size, cfg.halo
        self.receptive_field = self.tile_size = cfg.window_regions * cfg.region_size
        self.tiling_rule = _tiling_rule(cfg)
        self.config = cfg

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.encode(x, with_cls=True)[1])


def _tiling_rule(cfg: XTConfig) -> str:
    """The model card's sentence on tiling: windows of regions, one region of halo."""
    window = cfg.window_regions * cfg.region_size
    halo = f"a halo of one region ({cfg.halo} px) per side, blended away" if cfg.halo else "no halo"
    return (f"tiles are windows of {cfg.window_regions} x {cfg.window_regions} regions of {cfg.region_size} px "
            f"({window} px): the context encoder sees every region of the window; {halo}, because the outer ring "
            "of regions lacks context on one side")


def build_xt(cfg: XTConfig) -> HiresModel:
    """An xT classifier or segmenter (FPN head over the stitched maps, context in the coarsest) per ``cfg.task``."""
    if cfg.task == "classification":
        return XTClassifier(cfg)
    model = SegmentationModel(
        XTBackbone(cfg), cfg.num_classes, in_channels=cfg.in_channels, input_multiple=cfg.region_size,
        receptive_field=cfg.window_regions * cfg.region_size, halo=cfg.halo, decoder_width=cfg.decoder_width,
        config=cfg,
    )
    model.tile_size = cfg.window_regions * cfg.region_size  # the engine's tile is a whole window of regions
    model.tiling_rule = _tiling_rule(cfg)
    return model


def _configure(name: str, base: XTConfig, overrides: dict[str, Any]) -> XTConfig:
    """``base`` with ``overrides`` applied (the task is fixed by the name), or a clear error naming valid options."""
    return configure(name, base, overrides)


_TINY = XTConfig()
_TINY_SEG = replace(_TINY, task="segmentation", num_classes=4, decoder_width=128)
_NANO_SEG = XTConfig(
    task="segmentation", num_classes=4, region_size=128,
    region_encoder_args={"window_size": 4, "stem_width": 16, "depths": (1, 1, 1, 1), "widths": (32, 48, 64, 96),
                         "head_size": 16, "drop_path_rate": 0.1, "out_indices": (1, 2, 3, 4)},
    hidden=128, num_heads=2, mlp_hidden=256, decoder_width=32,
)
_NANO_CLS = replace(_NANO_SEG, task="classification", num_classes=2)


def _builder(name: str, base: XTConfig) -> Callable[..., HiresModel]:
    """A registry builder ``(**overrides) -> HiresModel`` for ``base``."""

    def builder(**overrides: Any) -> HiresModel:
        return build_xt(_configure(name, base, overrides))

    builder.__name__ = name
    return builder


for _name, _base, _published, _desc in (
    ("xt_maxvit_tiny", _TINY, True,
     "xT as published (2-layer causal context encoder, hidden 768, 284 classes) on MaxViT-T (P=8) 256 px regions"),
    ("xt_maxvit_tiny_seg", _TINY_SEG, False,
     "xT on MaxViT-T (P=8) 256 px regions, context added to the coarsest stage, FPN head for dense logits"),
    ("xt_nano_seg", _NANO_SEG, False,
     "small xT (one-block MaxViT, 128 px regions, hidden 128) with an FPN head, for CPU demos and tests"),
    ("xt_nano_cls", _NANO_CLS, False,
     "small xT (one-block MaxViT, 128 px regions, hidden 128) classifying whole windows, for CPU demos and tests"),
):
    register_model(_name, family=_FAMILY, task=_base.task, description=_desc, published=_published)(
        _builder(_name, _base)
    )
