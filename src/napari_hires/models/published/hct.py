"""HCT from its official PyTorch checkpoints (whiterabbit-ai/hct ``HCTBase``): a bare state dict under the official
module names (``conv_stages.first_conv``, ``conv_stages.layer_list.S.B.*``, ``ac_stages.layer_list.S.B.*``,
``final_bn``, ``classifier``).

The configuration comes from the file: input channels from the first conv, the stage widths and block counts from
the layer lists, the heads and random features from the Performer projections, the classes from the classifier. Not
in the file: the strides, 2 in every stage as the official code has them, and the Performer kernel, the
``--architecture``'s (``hct_base``, the published ReLU kernel, unless named otherwise).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from napari_hires.errors import HiresError
from napari_hires.models.card import Normalization
from napari_hires.models.checkpoints import Checkpoint, TensorMap
from napari_hires.models.importers import Conversion, build_configured, register_importer, registered_name
from napari_hires.models.performer import default_nb_features

_PAPER = "HCT (Taha et al., MICCAI 2022)"
_FIRST_CONV = "conv_stages.first_conv.weight"
_BLOCK = re.compile(r"(conv|ac)_stages\.layer_list\.(\d+)\.(\d+)\.")
# Inside a block, our module names -> the official ones (bn1, bn2, conv1 and conv2 are the same)
_RENAMES = (
    ("shortcut.", "downsample.0."),
    ("attention.projection", "performer_attention.fast_attention.projection_matrix"),
    ("attention.", "performer_attention."),
    ("conv.", "conv2."),  # an AC block's only conv
)
_HEAD = {"head.final_bn.": "final_bn.", "head.classifier.": "classifier."}


def official_name(ours: str, num_conv_stages: int) -> str:
    """The official ``HCTBase`` state-dict name of one of our HCT classifier's tensors."""
    if ours == "backbone.stem.0.weight":
        return _FIRST_CONV
    for prefix, theirs in _HEAD.items():
        if ours.startswith(prefix):
            return theirs + ours[len(prefix):]
    stage, block, rest = ours.removeprefix("backbone.stages.").split(".", 2)
    for old, new in _RENAMES:
        if rest.startswith(old):
            rest = new + rest[len(old):]
            break
    group, s = ("conv", int(stage)) if int(stage) < num_conv_stages else ("ac", int(stage) - num_conv_stages)
    return f"{group}_stages.layer_list.{s}.{block}.{rest}"


def _detect(checkpoint: Checkpoint) -> bool:
    return _FIRST_CONV in checkpoint.tensors


def _configuration(tensors: dict[str, torch.Tensor], path: str) -> dict[str, Any]:
    """Our HCTConfig fields the official tensors give: channels, stages, blocks, widths, heads, features, classes."""
    def shape(name: str) -> tuple[int, ...]:
        if name not in tensors:
            raise HiresError(f"{path} has no {name}, so its HCT configuration cannot be read from it; is it an "
                             "official HCTBase checkpoint (a state dict saved with torch.save)?")
        return tuple(tensors[name].shape)

    blocks: dict[tuple[str, int], int] = {}
    for key in tensors:
        found = _BLOCK.match(key)
        if found:
            stage = (found.group(1), int(found.group(2)))
            blocks[stage] = max(blocks.get(stage, 0), int(found.group(3)) + 1)
    conv = sorted(s for g, s in blocks if g == "conv")
    ac = sorted(s for g, s in blocks if g == "ac")
    widths = [shape(f"conv_stages.layer_list.{s}.0.conv1.weight")[0] for s in conv]
    widths += [shape(f"ac_stages.layer_list.{s}.0.conv2.weight")[0] for s in ac]
    heads, features = set(), set()
    for key in (k for k in tensors if k.endswith("performer_attention.fast_attention.projection_matrix")):
        m, dim_head = shape(key)
        heads.add(shape(key.replace("fast_attention.projection_matrix", "to_q.weight"))[0] // dim_head)
        features.add(None if m == default_nb_features(dim_head) else m)
    if len(heads) > 1 or len(features) > 1:
        raise HiresError(f"{path}'s AC blocks differ in heads ({sorted(heads)}) or random features; napari-hires's "
                         "HCT uses one number of heads and the Performer's d ln d features (or one fixed number)")
    first = shape(_FIRST_CONV)
    return {"in_channels": first[1], "num_classes": shape("classifier.weight")[0], "channels": tuple(widths),
            "strides": (2,) * len(widths),
            "blocks": tuple(blocks[("conv", s)] for s in conv) + tuple(blocks[("ac", s)] for s in ac),
            "num_conv_stages": len(conv), **({"heads": heads.pop()} if heads else {}),
            **({"nb_features": features.pop()} if features else {})}


@register_importer("hct", names=("hct*",), detect=_detect,
                   description="HCT's official PyTorch checkpoints (whiterabbit-ai/hct HCTBase state dicts)")
def convert(checkpoint: Checkpoint, architecture: str | None) -> Conversion:
    """The napari-hires HCT classifier an official ``HCTBase`` checkpoint holds, configured from its tensors."""
    name = registered_name(architecture, "hct_base", "hct*", "classification", "an HCT classifier")
    found = _configuration(checkpoint.tensors, str(checkpoint.path))
    model = build_configured(name, found)
    cfg = model.config
    sources = {ours: official_name(ours, cfg.num_conv_stages) for ours in model.state_dict()}
    # HCT reads mammograms as they are (no preprocessing in the official code): 16-bit images put on 0..1
    card = {"normalization": Normalization(scale=1 / 65535, mean=[0.0] * cfg.in_channels, std=[1.0] * cfg.in_channels),
            "description": f"HCT ({name}) imported from the official whiterabbit-ai/hct checkpoint "
                           f"{checkpoint.path.name}: {cfg.in_channels}-channel images, {cfg.num_classes} classes"}
    source = {"name": name, "code": "whiterabbit-ai/hct HCTBase", "paper": _PAPER, "task": "classification",
              "configuration": "tensor shapes" + (f" and --architecture {architecture}" if architecture else "")}
    return Conversion(model, TensorMap(sources), card, source)
