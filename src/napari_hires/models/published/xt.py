"""xT from its official trainer checkpoints (bair-climate-initiative/xT): ``torch.save`` of a payload whose
``state_dict`` holds ``module.decoder.*`` (the ``xl`` classification head: input projection, CLS token, LLaMA-style
layers, LayerNorm + Linear) and ``module.encoder.model.*`` (the region encoder, a timm ``features_only`` network).

The configuration comes from the file: the context encoder's width (``input_proj``), layers, MLP width and classes,
and the MaxViT region encoder's stem, widths, depths, head size and window (its relative-position tables); heads are
hidden // 128, as the release hard-codes them. The region side is the MaxViT's 32 x window (timm's image size), and
the tile is a window of regions, which no checkpoint records: the ``--architecture``'s (a registered ``xt_*``
classifier), else 2 x 2 regions, the 512 px crops of 256 px regions of the released iNaturalist configurations.

The released xT checkpoints hold Swin-V2 or Hiera region encoders, which napari-hires does not implement (its xT
offers MaxViT and HCT region encoders): those files are refused with a clear error.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models.card import Normalization
from napari_hires.models.checkpoints import Checkpoint, TensorMap
from napari_hires.models.importers import (
    Conversion,
    build_configured,
    configured,
    register_importer,
    registered_name,
)
from napari_hires.models.published.maxvit import backbone_shapes, maxvit_tensor_map

_PAPER = "xT (Gupta et al., ICML 2024)"
_REGION = "encoder.model."  # the release's backbone wrapper keeps its timm network as .model, xT keeps it as .encoder
_DEFAULT = "xt_maxvit_tiny"
_WINDOW_REGIONS = 2  # released iNaturalist configs: 512 px crops (data.crop_size) of 256 px regions (input_size)
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the release's iNaturalist pipeline, on 8-bit photos
_HEAD = ("input_proj.weight", "layers.0.attn.qkv.weight", "layers.0.mlp.gate_proj.weight", "cls.1.weight")
# Our context-encoder names -> the release's LLMClassificationDecoder ones; the classifier head is its decoder.cls
_CONTEXT = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "mlp.gate": "mlp.gate_proj",
            "mlp.up": "mlp.up_proj", "mlp.down": "mlp.down_proj"}


def decoder_name(ours: str) -> str:
    """The release's name of one of our xT classifier's context-encoder or head tensors."""
    if ours.startswith("head."):
        return "decoder.cls." + ours.removeprefix("head.")
    rest = ours.removeprefix("backbone.context.")
    found = re.match(r"layers\.(\d+)\.(.+)\.(\w+)$", rest)
    if found:
        layer, module, leaf = found.groups()
        rest = f"layers.{layer}.{_CONTEXT.get(module, module)}.{leaf}"
    return "decoder." + rest


def region_encoder_names(region_encoder: nn.Module) -> dict[str, str]:
    """``{our name: the release's}`` for the MaxViT region encoder: timm's features_only names under
    ``encoder.model.`` (stages flattened to ``stages_N``)."""
    return {f"backbone.region_encoder.{ours}": theirs
            for ours, theirs in maxvit_tensor_map(region_encoder, _REGION, flat_stages=True).items()}


def _detect(checkpoint: Checkpoint) -> bool:
    names = checkpoint.tensors
    return any(k.startswith("decoder.") for k in names) and any(k.startswith(_REGION) for k in names)


def _refuse_unsupported(checkpoint: Checkpoint) -> None:
    """A clear error for the released xT variants napari-hires does not implement (Swin-V2 / Hiera region encoders,
    heads other than the ``xl`` context encoder with attention)."""
    names, path = checkpoint.tensors, checkpoint.path.name
    if f"{_REGION}stem.conv1.weight" not in names:
        kind = "Swin-V2" if any(k.startswith(f"{_REGION}layers_") for k in names) else "Swin-V2 or Hiera"
        raise HiresError(f"{path} is an xT with a {kind} region encoder ({_REGION}patch_embed / layers_N / blocks "
                         "tensors); napari-hires's xT offers MaxViT and HCT region encoders, and Swin-V2 and Hiera "
                         "are not implemented: use an xT checkpoint with a timm MaxViT region encoder")
    if any(f"decoder.{k}" not in names for k in _HEAD):
        raise HiresError(f"{path} is an xT whose classification head is not the released 'xl' context encoder with "
                         "attention (decoder.input_proj, decoder.layers.N.attn); napari-hires's xT implements that "
                         "head only")


def _configuration(checkpoint: Checkpoint) -> dict[str, Any]:
    """Our XTConfig fields the file gives: context encoder, classes, region encoder (and so the region side)."""
    tensors = checkpoint.tensors
    region = backbone_shapes({k.removeprefix(_REGION): v for k, v in tensors.items() if k.startswith(_REGION)}, "_")
    in_channels = region.pop("in_channels")
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"decoder\.layers\.(\d+)\.", k))}
    return {
        "in_channels": in_channels, "num_classes": tensors["decoder.cls.1.weight"].shape[0],
        "hidden": tensors["decoder.input_proj.weight"].shape[0], "depth": len(layers), "num_heads": None,
        "mlp_hidden": tensors["decoder.layers.0.mlp.gate_proj.weight"].shape[0], "region_encoder": "maxvit",
        "region_size": 32 * region["window_size"],  # timm's MaxViT: windows and grids of image size / 32
        "region_encoder_args": {**region, "out_indices": (1, 2, 3, 4), "padding": "same"},
    }


def _region_fields(name: str, found: dict[str, Any], architecture: str | None) -> dict[str, Any]:
    """The region side and tile (window of regions): the architecture's, checked against the file, else defaults."""
    if architecture is None:
        return {**found, "window_regions": _WINDOW_REGIONS}
    side = configured(name).region_size
    if side != found["region_size"]:
        raise HiresError(f"{name} has regions of {side} px, but the file's MaxViT region encoder has windows of "
                         f"{found['region_encoder_args']['window_size']} and so regions of {found['region_size']} px; "
                         "name an xT architecture with that region size, or leave --architecture out")
    return found


@register_importer("xt", names=("xt_*",), detect=_detect,
                   description="xT's official trainer checkpoints (bair-climate-initiative/xT, xl head) with a timm "
                               "MaxViT region encoder")
def convert(checkpoint: Checkpoint, architecture: str | None) -> Conversion:
    """The napari-hires xT classifier an official xT checkpoint holds, configured from its tensors."""
    _refuse_unsupported(checkpoint)
    name = registered_name(architecture, _DEFAULT, "xt_*", "classification", "an xT classifier")
    model = build_configured(name, _region_fields(name, _configuration(checkpoint), architecture))
    cfg = model.config
    sources = region_encoder_names(model.backbone.region_encoder)
    sources.update({ours: decoder_name(ours) for ours in model.state_dict() if ours not in sources})
    card = {"normalization": Normalization(scale=1 / 255, mean=list(_IMAGENET[0]), std=list(_IMAGENET[1])),
            "description": f"xT ({name}) imported from the official bair-climate-initiative/xT checkpoint "
                           f"{checkpoint.path.name}: {cfg.num_classes} classes per window of {cfg.window_regions} x "
                           f"{cfg.window_regions} regions of {cfg.region_size} px, MaxViT region encoder"}
    source = {"name": name, "code": "bair-climate-initiative/xT xT (cls_head xl)", "paper": _PAPER,
              "task": "classification", "region_encoder": "timm MaxViT (features_only)",
              "configuration": "tensor shapes" + (f" and --architecture {architecture}" if architecture else "")}
    return Conversion(model, TensorMap(sources), card, source)
