"""MAXIM's official Flax checkpoints (google-research/maxim, ``checkpoint.npz``) as napari-hires MAXIM models.

The file is an ``np.savez`` of ``opt/target/<Flax module path>/<leaf>`` entries (what ``run_eval.get_params``
reads). Its configuration is read from the tensors themselves: stages, scales, depth, groups and bottleneck
blocks by counting modules, the width from the first input conv, block and grid sizes from the gating units' token
mixes (size^2 tokens), the gMLP factors from the projection widths. LeakyReLU slope (0.2) and LayerNorm eps (1e-6)
leave no trace in a file; every released model uses the Flax defaults.

The file cannot tell what it restores, so ``--architecture`` names the task (and, for a released file, the
dataset it was trained on): ``maxim_denoising``, ``maxim_deblurring``, ``maxim_deraining``, ``maxim_dehazing``,
``maxim_enhancement``, or a released checkpoint such as ``maxim_deblurring_gopro`` (which also checks that the file
is that release's variant; the release evaluates HIDE with the GoPro checkpoint and DND with SIDD's). Plain
``maxim`` or no name imports a restoration model whose card says the task is unknown.
"""

from __future__ import annotations

from math import isqrt
from typing import Any, Callable

from torch import nn

from napari_hires.errors import HiresError
from napari_hires.models.card import Normalization
from napari_hires.models.checkpoints import Checkpoint, TensorMap, Transform
from napari_hires.models.importers import Conversion, register_importer
from napari_hires.models.maxim import MAXIM, MAXIMConfig, MAXIMStage
from napari_hires.models.maxim_blocks import (
    RCAB,
    RDCAB,
    SAM,
    AxisGmlp,
    BottleneckBlock,
    ChannelAttention,
    CrossGatingBlock,
    DecoderBlock,
    EncoderBlock,
    GatingUnit,
    MultiAxisGmlp,
    SpatialGatingWeights,
    UpSampleRatio,
)
from napari_hires.models.registry import create_model

_PREFIX = "opt/target/"
_TILE = 512  # the engine's default tile; a 512 px tile costs the S-3 about 608 G multiply-adds

#: task slug -> (task as run_eval names it, the release's variant, {dataset slug: released checkpoint's dataset})
RELEASES: dict[str, tuple[str, str, dict[str, str]]] = {
    "denoising": ("Denoising", "S-3", {"sidd": "SIDD"}),
    "deblurring": ("Deblurring", "S-3", {"gopro": "GoPro", "reds": "REDS", "realblur_j": "RealBlur-J",
                                        "realblur_r": "RealBlur-R"}),
    "deraining": ("Deraining", "S-2", {"rain13k": "Rain13k", "raindrop": "Raindrop"}),
    "dehazing": ("Dehazing", "S-2", {"sots_indoor": "SOTS-Indoor", "sots_outdoor": "SOTS-Outdoor"}),
    "enhancement": ("Enhancement", "S-2", {"lol": "LOL", "fivek": "FiveK"}),
}
#: Every ``--architecture`` name: the generic one, one per task and one per released checkpoint.
NAMES = ("maxim", *(f"maxim_{t}" for t in RELEASES),
         *(f"maxim_{t}_{d}" for t, (_, _, sets) in RELEASES.items() for d in sets))
#: The official variants' widths (S, M); every other setting is S-3's (MAXIMConfig's defaults).
_VARIANT_FEATURES = {32: "S", 64: "M"}

# Flax module name of each child of our blocks (a ModuleList child: a template formatted with the item's index)
_Name = str | Callable[[nn.Module], str]
_CHILDREN: dict[type, dict[str, _Name]] = {
    MultiAxisGmlp: {"norm": "LayerNorm_in", "in_proj": "in_project", "grid": "GridGmlpLayer",
                    "block": "BlockGmlpLayer", "out_proj": "out_project"},
    AxisGmlp: {"norm": "LayerNorm", "in_proj": "in_project", "out_proj": "out_project",
               "gate": lambda m: ("Grid" if m.grid else "Block") + "GatingUnit"},
    GatingUnit: {"norm": "intermediate_layernorm", "spatial": "Dense_0"},
    ChannelAttention: {"squeeze": "Conv_0", "excite": "Conv_1"},
    RCAB: {"norm": "LayerNorm", "conv1": "conv1", "conv2": "conv2", "attention": "channel_attention"},
    RDCAB: {"norm": "LayerNorm", "fc1": "channel_mixing/Dense_0", "fc2": "channel_mixing/Dense_1",
            "attention": "channel_attention"},
    SpatialGatingWeights: {"norm": "LayerNorm_in", "in_proj": "in_project", "grid_mix": "Dense_0",
                           "block_mix": "Dense_1", "out_proj": "out_project"},
    CrossGatingBlock: {"up": "ConvTranspose_0", "conv_x": "Conv_0", "conv_y": "Conv_1", "norm_x": "LayerNorm_x",
                       "norm_y": "LayerNorm_y", "in_x": "in_project_x", "in_y": "in_project_y",
                       "gate_x": "SplitHeadMultiAxisGating_x", "gate_y": "SplitHeadMultiAxisGating_y",
                       "out_x": "out_project_x", "out_y": "out_project_y"},
    SAM: {"conv_feat": "Conv_0", "conv_image": "Conv_1", "conv_attn": "Conv_2"},
    EncoderBlock: {"proj": "Conv_0", "mabs": "SplitHeadMultiAxisGmlpLayer_{}", "rcabs": "channel_attention_block_1{}",
                   "cross": "cross_gating_block", "down": "Conv_1"},
    BottleneckBlock: {"proj": "input_proj", "mabs": "SplitHeadMultiAxisGmlpLayer_{}",
                      "rdcabs": "channel_attention_block_1_{}"},
    DecoderBlock: {"up": "ConvTranspose_0", "block": "UNetEncoderBlock_0"},
    UpSampleRatio: {"proj": "Conv_0"},
}


def _kernel(module: nn.Module) -> Transform | None:
    """Flax kernel -> torch weight: Dense (in, out) -> (out, in); Conv (kh, kw, in, out) -> (out, in, kh, kw);
    ConvTranspose (kh, kw, in, out), applied by Flax unflipped, -> (in, out, kh, kw) flipped in both spatial axes."""
    if isinstance(module, nn.Linear):
        return lambda k: k.T
    if isinstance(module, nn.ConvTranspose2d):
        return lambda k: k.permute(2, 3, 0, 1).flip(2, 3)
    if isinstance(module, nn.Conv2d):
        return lambda k: k.permute(3, 2, 0, 1)
    return None


def _walk(module: nn.Module, ours: str, theirs: str, sources: dict[str, str],
          transforms: dict[str, Transform]) -> None:
    """Add ``module``'s tensors (under our name ``ours`` and Flax path ``theirs``) and its children's."""
    for leaf, _ in module.named_parameters(recurse=False):
        key = f"{ours}.{leaf}"
        if leaf == "weight" and isinstance(module, nn.LayerNorm):
            sources[key] = f"{theirs}/scale"
        elif leaf == "weight":
            sources[key], transforms[key] = f"{theirs}/kernel", _kernel(module)
        else:
            sources[key] = f"{theirs}/{leaf}"
    names = _CHILDREN.get(type(module), {})
    for attr, child in module.named_children():
        if attr not in names:
            continue  # left unmapped: TensorMap.state reports a converter gap
        flax = names[attr] if isinstance(names[attr], str) else names[attr](module)
        items = enumerate(child) if isinstance(child, nn.ModuleList) else [(None, child)]
        for g, item in items:
            _walk(item, f"{ours}.{attr}" + ("" if g is None else f".{g}"),
                  f"{theirs}/{flax if g is None else flax.format(g)}", sources, transforms)


def _stage_modules(stage: MAXIMStage, s: int, depth: int) -> dict[str, tuple[nn.Module, str]]:
    """Our name -> (module, Flax top-level name) of each block of stage ``s``.

    Flax numbers the stages' UpSampleRatio modules in creation order, 2 * depth^2 per stage: first the encoder
    features resized for the cross-gating blocks (target level i from deep to fine, source level j fine to deep),
    then the cross-gated skips for the decoders (same target order; sources in creation order, deep to fine)."""
    blocks = {
        "input_convs": f"stage_{s}_input_conv_{{}}", "input_fuse": f"stage_{s}_input_fuse_sam_{{}}",
        "encoders": f"stage_{s}_encoder_block_{{}}", "bottleneck": f"stage_{s}_global_block_{{}}",
        "skip_gates": f"stage_{s}_cross_gating_block_{{}}", "decoders": f"stage_{s}_decoder_block_{{}}",
        "heads": f"stage_{s}_output_conv_{{}}" if stage.last else f"stage_{s}_supervised_attention_module_{{}}",
    }
    found = {f"{attr}.{i}": (m, flax.format(i)) for attr, flax in blocks.items()
             for i, m in enumerate(getattr(stage, attr) or ())}
    base, d = 2 * depth * depth * s, depth
    for i in range(d):
        for j in range(d):
            found[f"resize_enc.{i}.{j}"] = (stage.resize_enc[i][j], f"UpSampleRatio_{base + d * (d - 1 - i) + j}")
            found[f"resize_skip.{i}.{j}"] = (stage.resize_skip[i][j],
                                             f"UpSampleRatio_{base + d * d + d * (d - 1 - i) + (d - 1 - j)}")
    return found


def tensor_map(model: MAXIM, ignore: frozenset[str] = frozenset()) -> TensorMap:
    """Where each tensor of ``model`` sits in an official checkpoint, with the kernel layout changes."""
    sources: dict[str, str] = {}
    transforms: dict[str, Transform] = {}
    for s, stage in enumerate(model.stages):
        for ours, (module, flax) in _stage_modules(stage, s, model.config.depth).items():
            _walk(module, f"stages.{s}.{ours}", _PREFIX + flax, sources, transforms)
    return TensorMap(sources, transforms, ignore)


class _Reader:
    """Shapes of an official checkpoint's tensors by Flax path, with errors that say what is missing."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.path = checkpoint.path
        self.shapes = {k[len(_PREFIX):]: tuple(v.shape) for k, v in checkpoint.tensors.items()
                       if k.startswith(_PREFIX)}

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.shapes:
            raise HiresError(f"{self.path} is not a MAXIM checkpoint in the official layout: it lacks "
                             f"{_PREFIX}{name}. Import checkpoint.npz files of google-research/maxim as released")
        return self.shapes[name]

    def count(self, template: str) -> int:
        """How many of ``template.format(0)``, ``template.format(1)``, ... the file holds, from 0 on."""
        n = 0
        while template.format(n) in self.shapes:
            n += 1
        return n

    def side(self, name: str) -> int:
        """The side of the square block or grid that a token-mixing Dense of ``name`` mixes."""
        tokens = self.shape(name)[0]
        if isqrt(tokens) ** 2 != tokens:
            raise HiresError(f"{self.path}: {_PREFIX}{name} mixes {tokens} tokens, not a square block or grid; "
                             "it is not a MAXIM checkpoint napari-hires can import")
        return isqrt(tokens)

    def ratio(self, name: str) -> int:
        """Output / input width of the Dense ``name`` (a gMLP factor)."""
        cin, cout = self.shape(name)[-2:]
        if cout % cin:
            raise HiresError(f"{self.path}: {_PREFIX}{name} projects {cin} to {cout} channels, not a whole factor")
        return cout // cin


def read_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """The MAXIMConfig fields an official checkpoint holds, read from its tensor names and shapes."""
    r = _Reader(checkpoint)
    conv = r.shape("stage_0_input_conv_0/kernel")
    if "stage_0_input_conv_0/bias" not in r.shapes:
        raise HiresError(f"{r.path} has no biases (a MAXIM trained with use_bias=False); napari-hires imports the "
                         "released models, which all use biases")
    r.shape("stage_0_encoder_block_0/Conv_0/kernel")  # at least one level
    stages, depth = r.count("stage_{}_input_conv_0/kernel"), r.count("stage_0_encoder_block_{}/Conv_0/kernel")
    encoder = "stage_0_encoder_block_{}/"
    mab = encoder.format(0) + "SplitHeadMultiAxisGmlpLayer_{}/"
    unit = "{}SplitHeadMultiAxisGmlpLayer_0/{kind}GmlpLayer/{kind}GatingUnit/Dense_0/kernel"
    sizes = [encoder.format(i) for i in range(depth)] + ["stage_0_global_block_0/"]  # the levels, the bottleneck
    *levels, low = [(r.side(unit.format(p, kind="Block")), r.side(unit.format(p, kind="Grid"))) for p in sizes]
    high = levels[0]
    outputs = r.shape(f"stage_{stages - 1}_output_conv_0/kernel")[-1]
    if outputs != conv[2]:
        raise HiresError(f"{r.path} restores {conv[2]}-channel images to {outputs} channels; napari-hires imports "
                         "MAXIMs whose output has the input's channels (every released one: RGB to RGB)")
    squeeze = r.shape(encoder.format(0) + "channel_attention_block_10/channel_attention/Conv_0/kernel")
    config = dict(
        features=conv[3], in_channels=conv[2], num_stages=stages, depth=depth,
        num_supervision_scales=r.count("stage_0_input_conv_{}/kernel"),
        num_groups=r.count(mab + "LayerNorm_in/scale"),
        num_bottleneck_blocks=r.count("stage_0_global_block_{}/input_proj/kernel"),
        block_size_hr=high[0], grid_size_hr=high[1], block_size_lr=low[0], grid_size_lr=low[1],
        input_proj_factor=r.ratio(mab.format(0) + "in_project/kernel"),
        block_gmlp_factor=r.ratio(mab.format(0) + "BlockGmlpLayer/in_project/kernel"),
        grid_gmlp_factor=r.ratio(mab.format(0) + "GridGmlpLayer/in_project/kernel"),
        channels_reduction=squeeze[2] // squeeze[3],
    )
    if high != low:  # the leading levels with the high-resolution sizes (equal sizes: any count builds the same)
        config["high_res_levels"] = next((i for i, sizes in enumerate(levels) if sizes != high), depth)
    return config


def variant(config: dict[str, Any]) -> str:
    """The official variant name ("S-3", "M-2", ...) of a read configuration, or a short description of it."""
    letter = _VARIANT_FEATURES.get(config["features"])
    rest = {k: v for k, v in config.items() if k not in ("features", "num_stages")}
    published = MAXIMConfig()
    if letter and all(getattr(published, k) == v for k, v in rest.items()):
        return f"{letter}-{config['num_stages']}"
    return (f"custom ({config['num_stages']} stages, features {config['features']}, depth {config['depth']}, "
            f"blocks {config['block_size_hr']}/{config['block_size_lr']}, grids {config['grid_size_hr']}/"
            f"{config['grid_size_lr']})")


def _release(architecture: str | None) -> tuple[str, str, str | None]:
    """(task, dataset, the release's variant or None) that an ``--architecture`` name gives."""
    if architecture in (None, "maxim"):
        return "unknown", "unknown", None
    slug = architecture[len("maxim_"):]
    for task, (name, release_variant, datasets) in RELEASES.items():
        if slug == task:
            return name, "unknown", None
        for d, dataset in datasets.items():
            if slug == f"{task}_{d}":
                return name, dataset, release_variant
    raise HiresError(f"unknown MAXIM checkpoint {architecture!r}; name one of {', '.join(NAMES)}")


def _detect(checkpoint: Checkpoint) -> bool:
    return f"{_PREFIX}stage_0_input_conv_0/kernel" in checkpoint.tensors


@register_importer("maxim", names=NAMES, detect=_detect,
                   description="MAXIM (google-research/maxim) Flax checkpoint.npz, any released task")
def convert(checkpoint: Checkpoint, architecture: str | None) -> Conversion:
    """An official MAXIM checkpoint as our MAXIM, configured from the file; the name gives the task for the card."""
    config = read_config(checkpoint)
    task, dataset, release_variant = _release(architecture)
    found = variant(config)
    if release_variant is not None and found != release_variant:
        raise HiresError(f"{checkpoint.path} is not the released MAXIM {release_variant} {task} checkpoint for "
                         f"{dataset}: it is {found}. Import it as maxim_{task.lower()} to name only its task")
    base = "maxim_2s" if config["num_stages"] == 2 else "maxim_3s"
    defaults = MAXIMConfig(num_stages=2) if base == "maxim_2s" else MAXIMConfig()
    window = config["block_size_lr"] * 2 ** config["depth"]  # the halo: the bottleneck's block, in input pixels
    settings = {**config, "halo": window}
    model = create_model(base, **{k: v for k, v in settings.items() if getattr(defaults, k) != v})
    if task == "unknown":
        what = ("for a task its file does not say (import it with --architecture maxim_denoising, maxim_deblurring, "
                "maxim_deraining, maxim_dehazing or maxim_enhancement to record it)")
    else:
        what = f"for {task.lower()}" + ("" if dataset == "unknown" else f", trained on {dataset}")
    card = {
        "normalization": Normalization(scale=1 / 255, mean=[0.0] * model.in_channels, std=[1.0] * model.in_channels),
        "tile_size": _TILE,
        "tiling": (f"tiles of {_TILE} px (a multiple of {model.input_multiple}: every level's block and grid "
                   f"partition is exact); the grid gMLP mixes pixels across the whole tile, so no halo makes tiles "
                   f"seam-free: a halo of {window} px per side (the bottleneck's block window) holds most of an "
                   "output pixel's dependence, and neighbouring tiles are cross-faded"),
        "description": f"MAXIM {found} from google-research/maxim {what}; RGB on the 0..1 scale in and out",
    }
    ignore = frozenset(k for k in checkpoint.tensors if not k.startswith(_PREFIX))  # run_eval reads opt/target only
    source = {"name": architecture or "maxim", "code": f"google-research/maxim {found}", "task": task,
              "dataset": dataset}
    return Conversion(model, tensor_map(model, ignore), card, source)
