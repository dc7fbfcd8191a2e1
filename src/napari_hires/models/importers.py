"""Published checkpoints become napari-hires models: one registered importer per family (HCT, MaxViT from timm,
MAXIM from Flax, xT), each a plain function from a :class:`Checkpoint` to a :class:`Conversion`.

An importer builds the napari-hires model the checkpoint holds (its configuration read from the file, or from the
``--architecture`` name where the file cannot tell) and says where each tensor comes from (a :class:`TensorMap`);
:func:`import_checkpoint` checks the names and shapes, loads the weights and writes the card (source, task, classes,
normalisation, input multiple, tile and halo), so every family fails the same way on a file that does not fit.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel
from napari_hires.models.checkpoints import Checkpoint, TensorMap, read_checkpoint


@dataclass
class Conversion:
    """What an importer found: the ``model`` (built, not yet loaded), where its tensors come from, the card fields
    only the importer knows (``class_names``, ``normalization``, ``description``, ``tile_size``, ``halo``, ...) and
    ``source``: what the checkpoint is (the official code, configuration and task), for the card's provenance."""

    model: HiresModel
    tensors: TensorMap
    card: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)


Convert = Callable[[Checkpoint, str | None], Conversion]


@dataclass(frozen=True)
class Importer:
    """A family's importer: ``names`` (globs) it accepts as ``--architecture``, ``detect`` (whether a checkpoint
    looks like the family's) and ``convert`` (checkpoint and the name asked for, or None, to a conversion)."""

    family: str
    names: tuple[str, ...]
    detect: Callable[[Checkpoint], bool]
    convert: Convert
    description: str = ""


_IMPORTERS: dict[str, Importer] = {}


def register_importer(family: str, *, names: tuple[str, ...], detect: Callable[[Checkpoint], bool],
                      description: str = "") -> Callable[[Convert], Convert]:
    """Decorator: register ``convert`` as the importer of ``family``'s published checkpoints."""

    def decorate(convert: Convert) -> Convert:
        _IMPORTERS[family] = Importer(family, names, detect, convert, description)
        return convert

    return decorate


def importers() -> dict[str, Importer]:
    """The registered importers by family (the built-in families are registered on first use)."""
    from napari_hires.models.registry import _ensure_loaded

    _ensure_loaded()
    return dict(_IMPORTERS)


def importable_names() -> list[str]:
    """Every ``--architecture`` name (or glob) an importer accepts, sorted."""
    return sorted(n for imp in importers().values() for n in imp.names)


def registered_name(architecture: str | None, default: str, pattern: str, task: str, what: str) -> str:
    """The registered configuration an importer builds: ``architecture`` when it is one of the untrained ``task``
    models matching ``pattern``, ``default`` when none is asked for, else an error listing those it accepts."""
    from napari_hires.models.registry import list_models

    known = list_models(pattern, task=task, trained=False)
    if architecture is None or architecture in known:
        return architecture or default
    raise HiresError(f"{architecture} is not {what} configuration napari-hires imports; name one of "
                     f"{', '.join(known)}")


def configured(name: str, found: dict[str, Any] | None = None) -> Any:
    """The configuration of the registered ``name`` with the fields a checkpoint gave (``found``) applied, without
    building the model's weights."""
    from dataclasses import replace

    from napari_hires.models.registry import create_model

    with torch.device("meta"):  # only the configuration is wanted: no memory, no time
        return replace(create_model(name).config, **(found or {}))


def build_configured(name: str, found: dict[str, Any]) -> HiresModel:
    """``create_model(name)`` with the configuration fields a checkpoint gave (``found``); only those that differ
    from ``name``'s become overrides, so the card records exactly what the file changed."""
    from napari_hires.models.registry import create_model

    base = configured(name)
    return create_model(name, **{k: v for k, v in found.items() if v != getattr(base, k)})


def _importer_for(checkpoint: Checkpoint, architecture: str | None) -> Importer:
    known = importers()
    if architecture is not None:
        for imp in known.values():
            if any(fnmatch.fnmatch(architecture, pattern) for pattern in imp.names):
                return imp
        raise HiresError(f"no importer for architecture {architecture!r}; napari-hires imports "
                         f"{', '.join(importable_names())}")
    found = [imp for imp in known.values() if imp.detect(checkpoint)]
    if len(found) == 1:
        return found[0]
    what = "several families (" + ", ".join(i.family for i in found) + ")" if found else "none of the families"
    raise HiresError(f"{checkpoint.path} looks like {what} napari-hires imports; name its architecture "
                     f"(--architecture NAME, one of {', '.join(importable_names())})")


def import_checkpoint(path: str | os.PathLike, architecture: str | None = None) -> HiresModel:
    """The napari-hires model a published checkpoint holds, with its weights and card (``model.card``), in eval mode
    on the CPU. ``architecture`` names the published configuration where the file alone cannot tell (or to check
    it); left out, the family is recognised from the tensor names. Nothing in the file is unpickled."""
    from napari_hires.models.files import card_for, file_digest

    checkpoint = read_checkpoint(path)
    importer = _importer_for(checkpoint, architecture)
    conversion = importer.convert(checkpoint, architecture)
    model = conversion.model
    what = conversion.source.get("name", architecture or importer.family)
    hint = (f"Check that {Path(path).name} is a {importer.family} checkpoint of {what}"
            + ("" if architecture else " (or name its configuration with --architecture)"))
    model.load_state_dict(conversion.tensors.state(checkpoint, model, what, hint), strict=True)
    provenance = {"imported_from": {"file": Path(path).name, "sha256": file_digest(path), "format": checkpoint.format,
                                    "family": importer.family, **conversion.source}}
    card = card_for(model, provenance=provenance, **conversion.card)
    model.card, model.trained = card, True
    model.halo, model.tile_size = card.halo, card.tile_size
    return model.eval()
