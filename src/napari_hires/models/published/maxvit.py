"""MaxViT from timm / Hugging Face: ``model.safetensors`` or ``.pth`` state dicts under timm's ``maxvit_*_tf_*`` names
(the TF-equivalent MaxViT that hosts the official google-research weights).

The configuration comes from, in this order: a Hugging Face ``config.json`` beside the file (``architecture`` and
``model_args``, as timm's ``save_for_hf`` writes them; ``pretrained_cfg`` gives the normalisation), the
``--architecture`` name, or the tensor shapes (stem width, widths, depths, heads from the relative-position tables,
the window from their size). A checkpoint without a classifier (timm ``features_only``, or a backbone saved alone)
imports as a segmenter whose FPN decoder is new: an encoder for ``create_model("maxvit_tiny_seg", encoder=FILE)``.

:func:`maxvit_tensor_map` is the one name mapping, for any module holding our MaxViT (a classifier, a segmenter or
the backbone itself) and any place the timm tensors sit in a file (a prefix, timm's ``features_only`` flattening).
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models.card import Normalization
from napari_hires.models.checkpoints import Checkpoint, TensorMap
from napari_hires.models.importers import Conversion, build_configured, configured, register_importer
from napari_hires.models.maxvit import TF_SIZES, MaxViTConfig, tf_name

_PAPER = "MaxViT (Tu et al., ECCV 2022)"
_IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # timm's 224 px ImageNet-1k weights
_HALF = ([0.5] * 3, [0.5] * 3)  # every other released weight set (384/512 px, ImageNet-21k)
_ENCODER_BASE = "maxvit_tiny_seg"  # the segmenter a classifier-less checkpoint becomes (its decoder is new)
_TRAINING_ARGS = ("drop_rate", "drop_path_rate")  # model_args that change training only, not the weights' model

# Our module names -> timm's, per part of the model. Ours: Stem and MBConv.residual are Sequentials, the shortcut's
# conv is its last entry, PartitionAttention holds norm / attn / ffn (a Sequential), TanhHead norm / pre_logits / fc.
_STEM = {"0": "conv1", "1": "norm1", "3": "conv2"}
_MBCONV = {"residual.0": "pre_norm", "residual.1": "conv1_1x1", "residual.2": "norm1", "residual.4": "conv2_kxk",
           "residual.5": "norm2", "residual.7.reduce": "se.fc1", "residual.7.expand": "se.fc2",
           "residual.8": "conv3_1x1"}
_PARTITIONS = {"block_attn": "attn_block", "grid_attn": "attn_grid"}
_ATTENTION = {"norm": "norm1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "attn.bias": "attn.rel_pos",
              "ffn.0": "norm2", "ffn.1": "mlp.fc1", "ffn.3": "mlp.fc2"}
_HEAD = {"norm": "norm", "pre_logits": "pre_logits.fc", "fc": "fc"}
_LEAVES = {"table": "relative_position_bias_table"}


def timm_name(ours: str) -> str | None:
    """timm's state-dict name for one of ours (relative to the backbone, or ``head.*``); None where timm's MaxViT
    has no such tensor (an FPN decoder)."""
    module, _, leaf = ours.rpartition(".")
    leaf = _LEAVES.get(leaf, leaf)
    top, _, rest = module.partition(".")
    if top == "stem":
        inner = _STEM.get(rest)
        return inner and f"stem.{inner}.{leaf}"
    if top == "head":
        inner = _HEAD.get(rest)
        return inner and f"head.{inner}.{leaf}"
    parts = module.split(".")
    if top != "stages" or len(parts) < 5:
        return None
    stage, block, kind, rest = parts[1], parts[2], parts[3], ".".join(parts[4:])
    if kind == "mbconv":
        part, inner = "conv", "shortcut.expand" if rest.startswith("shortcut.") else _MBCONV.get(rest)
    else:
        part, inner = _PARTITIONS.get(kind), _ATTENTION.get(rest)
    return part and inner and f"stages.{stage}.blocks.{block}.{part}.{inner}.{leaf}"


def maxvit_tensor_map(module: nn.Module, prefix: str = "", *, flat_stages: bool = False) -> dict[str, str]:
    """``{our state-dict name: timm's}`` for every tensor of ``module`` that timm's MaxViT has: a MaxViT classifier
    or segmenter (names under ``backbone.`` and ``head.``) or a :class:`MaxViTBackbone` itself; the decoder of a
    segmenter is left out.

    ``prefix`` is where the timm model sits in the file (``"encoder.model."`` in xT's checkpoints); ``flat_stages``
    writes ``stages.N`` as ``stages_N``, as timm's ``features_only`` networks name their stages.
    """
    sources = {}
    for ours in module.state_dict():
        theirs = timm_name(ours.removeprefix("backbone."))
        if theirs is not None:
            sources[ours] = prefix + (re.sub(r"^stages\.(\d+)\.", r"stages_\1.", theirs) if flat_stages else theirs)
    return sources


def _detect(checkpoint: Checkpoint) -> bool:
    names = checkpoint.tensors
    return "stem.conv1.weight" in names and any(
        re.match(r"stages[._]0\.blocks\.0\.attn_block\.attn\.rel_pos\.", k) for k in names)


@register_importer("maxvit", names=("maxvit_*",), detect=_detect,
                   description="timm / Hugging Face MaxViT (maxvit_*_tf_*): safetensors or .pth state dicts")
def convert(checkpoint: Checkpoint, architecture: str | None) -> Conversion:
    """The napari-hires MaxViT a timm checkpoint holds: classifier, or FPN segmenter around a classifier-less
    backbone, configured from config.json, the architecture name or the tensor shapes."""
    from napari_hires.models.encoders import HEAD_FIELDS

    tensors = checkpoint.tensors
    flat = any(k.startswith("stages_") for k in tensors)
    config = checkpoint.meta.get("config")
    config = config if isinstance(config, dict) and "architecture" in config else None
    name, how, found = _configuration(checkpoint, config, architecture, flat)
    target = configured(name, found)
    source = {"name": name, "code": f"timm {name}", "paper": _PAPER, "configuration": how}
    card = {"normalization": _normalization(config, name), "tile_size": 32 * target.window_size}
    if "head.fc.weight" in tensors:
        card.update(halo=0, class_names=_class_names(config, target.num_classes),
                    description=f"{name} imported from timm ({target.num_classes} classes, {card['tile_size']} px)")
        model = build_configured(name, found)
        return Conversion(model, TensorMap(maxvit_tensor_map(model, flat_stages=flat)), card,
                          {**source, "task": "classification"})
    head = HEAD_FIELDS["maxvit"] - {"in_channels"}  # the segmenter keeps its head, the file gives the backbone
    model = build_configured(_ENCODER_BASE, {k: v for k, v in _as_dict(target).items() if k not in head})
    sources = maxvit_tensor_map(model, flat_stages=flat)
    card["description"] = (f"the {name} backbone imported from timm (no classifier in the file) with a new, untrained "
                           f"FPN decoder: use it as the encoder of a segmenter ({_ENCODER_BASE}, encoder=FILE)")
    return Conversion(model, TensorMap(sources, keep=frozenset(k for k in model.state_dict() if k not in sources),
                                       ignore=frozenset(k for k in tensors if k.startswith("head."))),
                      card, {**source, "task": "features"})


def _configuration(checkpoint: Checkpoint, config: dict[str, Any] | None, architecture: str | None,
                   flat: bool) -> tuple[str, str, dict[str, Any]]:
    """(registered name, where the configuration came from, our fields that differ from that name's): from
    config.json, else the architecture asked for (classes from the file), else the tensor shapes."""
    tensors = checkpoint.tensors
    if config is not None:
        name = _registered(str(config["architecture"]))
        if architecture is not None and _registered(architecture) != name:
            raise HiresError(f"{checkpoint.path.name}'s config.json says {config['architecture']} but the architecture "
                             f"asked for is {architecture}; drop --architecture or the config.json that disagrees")
        return name, "config.json", _model_args(config.get("model_args") or {}, config.get("num_classes"))
    if architecture is not None:
        head = tensors.get("head.fc.weight")
        return _registered(architecture), "--architecture", {} if head is None else {"num_classes": head.shape[0]}
    found = backbone_shapes(tensors, "_" if flat else ".")
    return _published_name(found), "tensor shapes", found


def _registered(name: str) -> str:
    """The registered MaxViT classifier ``name`` stands for (timm's ``.in1k``-style tags dropped), or an error."""
    from napari_hires.models.registry import list_models

    known = list_models("maxvit_*", task="classification", trained=False)
    for candidate in (name, name.split(".")[0]):
        if candidate in known:
            return candidate
    raise HiresError(f"{name} is not a MaxViT configuration napari-hires imports; the timm TF ones are "
                     f"{', '.join(n for n in known if '_tf_' in n)}")


def _as_dict(cfg: MaxViTConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


def _pair(key: str, value: Any) -> int:
    """A timm size given as an int or a square (h, w) pair."""
    sizes = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)] * 2
    if len(sizes) != 2 or sizes[0] != sizes[1]:
        raise HiresError(f"model_args {key}={value!r}: napari-hires's MaxViT needs square windows and grids (one size)")
    return sizes[0]


def _model_args(args: dict[str, Any], num_classes: Any) -> dict[str, Any]:
    """Our configuration fields from timm's ``model_args`` (keyword overrides of the named configuration)."""
    out: dict[str, Any] = {} if num_classes is None else {"num_classes": int(num_classes)}
    for key, value in args.items():
        if key == "img_size":
            out["window_size"] = _pair(key, value) // 32  # timm's partition ratio: windows = grids = image / 32
        elif key in ("transformer_window_size", "transformer_grid_size"):
            out["window_size"] = _pair(key, value)
        elif key == "stem_width":
            out["stem_width"] = _pair(key, value)
        elif key in ("transformer_dim_head", "dim_head"):
            out["head_size"] = int(value)
        elif key in ("embed_dim", "depths"):
            out["widths" if key == "embed_dim" else "depths"] = tuple(int(v) for v in value)
        elif key in ("num_classes", "in_chans"):
            out["num_classes" if key == "num_classes" else "in_channels"] = int(value)
        elif key not in _TRAINING_ARGS and not (key == "global_pool" and value == "avg") and key != "head_hidden_size":
            raise HiresError(f"model_args {key}={value!r} in config.json is not something napari-hires's MaxViT "
                             "has; it imports timm's maxvit_*_tf_* models with their published structure")
    hidden = args.get("head_hidden_size")
    if hidden is not None and "widths" in out and int(hidden) != out["widths"][-1]:
        raise HiresError(f"model_args head_hidden_size={hidden} differs from the last width {out['widths'][-1]}; "
                         "napari-hires's MaxViT head keeps the last stage's width")
    return out


def backbone_shapes(tensors: dict[str, torch.Tensor], sep: str) -> dict[str, Any]:
    """The configuration fields the tensor shapes give: stem, widths, depths, heads and window per stage."""
    def shape(name: str) -> tuple[int, ...]:
        if name not in tensors:
            raise HiresError(f"the MaxViT checkpoint has no {name}, so its configuration cannot be read from it; "
                             "name it with --architecture (maxvit_*_tf_*) or put timm's config.json beside it")
        return tuple(tensors[name].shape)

    blocks: dict[int, int] = {}
    for key in tensors:
        found = re.match(rf"stages{re.escape(sep)}(\d+)\.blocks\.(\d+)\.", key)
        if found:
            stage, block = int(found.group(1)), int(found.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    stages = [f"stages{sep}{s}.blocks.0" for s in sorted(blocks)]
    widths = tuple(shape(f"{s}.conv.conv3_1x1.weight")[0] for s in stages)
    tables = [shape(f"{s}.attn_block.attn.rel_pos.relative_position_bias_table") for s in stages]
    head_sizes = {w // t[0] for w, t in zip(widths, tables)}
    if len(head_sizes) != 1:
        raise HiresError(f"the MaxViT checkpoint's stages have heads of different sizes ({sorted(head_sizes)}); "
                         "napari-hires's MaxViT uses one head size")
    stem = shape("stem.conv1.weight")
    out = {"in_channels": stem[1], "stem_width": stem[0], "depths": tuple(blocks[s] for s in sorted(blocks)),
           "widths": widths, "head_size": head_sizes.pop(), "window_size": (tables[0][-1] + 1) // 2}
    if "head.fc.weight" in tensors:
        out["num_classes"] = shape("head.fc.weight")[0]
    return out


def _published_name(found: dict[str, Any]) -> str:
    """The registered published name whose size these fields are (at their window), else MaxViT-T at 224."""
    from napari_hires.models.registry import list_models

    for size, (stem, depths, widths) in TF_SIZES.items():
        if (stem, depths, widths) == (found["stem_width"], found["depths"], found["widths"]):
            name = tf_name(size, 32 * found["window_size"], found.get("num_classes", 1000))
            if name in list_models():
                return name
    return tf_name("tiny", 224)


def _normalization(config: dict[str, Any] | None, name: str) -> Normalization:
    """Pixels as the weights were trained: timm's pretrained_cfg mean/std, else what timm lists for ``name``."""
    pretrained = (config or {}).get("pretrained_cfg") or {}
    if "mean" in pretrained and "std" in pretrained:
        mean, std = [float(v) for v in pretrained["mean"]], [float(v) for v in pretrained["std"]]
    else:
        mean, std = _IMAGENET if re.fullmatch(r"maxvit_\w+_tf_224", name) else _HALF
    return Normalization(scale=1 / 255, mean=mean, std=std)


def _class_names(config: dict[str, Any] | None, num_classes: int) -> dict[int, str]:
    """Class names where config.json lists them (timm's ``label_names``), one per class."""
    names = (config or {}).get("label_names") or []
    return {i: str(n) for i, n in enumerate(names)} if len(names) == num_classes else {}

