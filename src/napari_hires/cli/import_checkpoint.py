"""``napari-hires import CHECKPOINT [--architecture NAME] --out FILE``: a published checkpoint (HCT ``.pth``, timm /
Hugging Face MaxViT, MAXIM Flax ``.npz``, xT) as a napari-hires model file (safetensors + card)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``import`` sub-command to the sub-parsers of ``napari-hires``."""
    p = sub.add_parser(
        "import",
        help="turn a published checkpoint into a napari-hires model file (safetensors + card)",
        description="Read a published checkpoint without unpickling it (.pth/.pt/.bin/.ckpt through torch.load with "
                    "weights_only, .safetensors, .npz without pickle), map its tensors onto the napari-hires model "
                    "and write OUT.safetensors with its card OUT.json.",
    )
    p.add_argument("checkpoint", help="the checkpoint file; a Hugging Face config.json beside it is read too")
    p.add_argument("--architecture", metavar="NAME",
                   help="the published configuration (e.g. maxvit_tiny_tf_224); left out, it is recognised from "
                        "the file")
    p.add_argument("--out", required=True, metavar="FILE", help="the model file to write (FILE.safetensors + .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from napari_hires.errors import OutputExistsError
    from napari_hires.models import count_parameters, save_model
    from napari_hires.models.importers import import_checkpoint

    out = Path(args.out)
    weights = out if out.suffix == ".safetensors" else out.with_name(out.name + ".safetensors")
    if not args.overwrite and (weights.exists() or weights.with_suffix(".json").exists()):
        raise OutputExistsError(f"{weights} already exists; choose another --out or pass --overwrite")
    model = import_checkpoint(args.checkpoint, args.architecture)
    path = save_model(model, weights)
    card = model.card
    classes = f"{card.out_channels} classes" if card.task != "restoration" else f"{card.out_channels} channels"
    print(f"imported {args.checkpoint} as {card.architecture} ({card.task}, {classes}, "
          f"{count_parameters(model):,} parameters; tile {card.tile_size}, halo {card.halo}, input multiple "
          f"{card.input_multiple}); wrote {path} and {path.with_suffix('.json')}")
    return 0
