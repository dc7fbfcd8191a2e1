"""Model files: ``NAME.safetensors`` (weights) beside ``NAME.json`` (the card, which records the weights' sha256, checked
on loading). Nothing is ever unpickled."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from napari_hires.errors import HiresError, UnverifiedWeightsWarning
from napari_hires.models.base import HiresModel
from napari_hires.models.card import ModelCard, Normalization
from napari_hires.models.registry import create_model

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
#: Cards already warned about for recording no digest (once per file and process).
_UNVERIFIED: set[str] = set()


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, card) for a path given as either file or as the stem."""
    path = Path(path)
    if path.suffix == ".json":
        for suffix in WEIGHT_SUFFIXES:
            if path.with_suffix(suffix).exists():
                return path.with_suffix(suffix), path
        return path.with_suffix(".safetensors"), path
    if path.suffix in WEIGHT_SUFFIXES:
        return path, path.with_suffix(".json")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def card_for(model: HiresModel, **fields) -> ModelCard:
    """A card describing ``model`` as built by ``create_model``; ``fields`` fill or override card fields."""
    name = model.architecture
    if name is None and "architecture" not in fields:
        raise HiresError(
            f"{type(model).__name__} was not built by napari_hires.models.create_model, so its card needs an "
            "explicit architecture= (a registered model name)"
        )
    facts = model.describe()
    card = ModelCard(
        architecture=name,
        task=model.task,
        in_channels=model.in_channels,
        out_channels=model.out_channels,
        overrides=dict(model.overrides),
        normalization=Normalization(mean=[0.5] * model.in_channels, std=[0.25] * model.in_channels),
        input_multiple=facts["input_multiple"],
        halo=facts["halo"],
        tile_size=facts["tile_size"],
        tiling=facts["tiling"],
        provenance={"encoder": dict(model.encoder)} if model.encoder else {},
    )
    for key, value in fields.items():
        setattr(card, key, value)
    return card


def save_model(model: HiresModel, path: str | os.PathLike, card: ModelCard | None = None,
               floats: torch.dtype | None = None) -> Path:
    """Write weights (safetensors) and card (JSON) atomically; returns the weights path.

    The card records the sha256 of the weights file (``card.weights_sha256`` is set), which loading checks. Both
    files get the permissions of any new file (the umask's), so that the workers of a shared cluster can read them.
    ``floats`` stores floating tensors as that dtype (float16 halves a file; loading casts back to the model's).
    """
    from safetensors.torch import save

    weights, card_path = _paths(path)
    if weights.suffix != ".safetensors":
        raise HiresError(f"model files are saved as .safetensors, not {weights.suffix}: use {weights.with_suffix('.safetensors')}")
    card = card or model.card or card_for(model)
    card.validate(str(card_path))  # a card that would not load is refused now, not when the file is next opened
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if floats is not None:
        tensors = {k: v.to(floats) if v.is_floating_point() else v for k, v in tensors.items()}
    blob = save(tensors, metadata={"format": "pt", "architecture": card.architecture})
    card.weights_sha256 = hashlib.sha256(blob).hexdigest()
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_c = weights.with_name(weights.name + ".partial"), card_path.with_name(card_path.name + ".partial")
    try:
        tmp_w.write_bytes(blob)  # an ordinary file write: the umask's permissions, OSError on a full disk
        tmp_c.write_text(card.to_json())
        os.replace(tmp_w, weights)
        os.replace(tmp_c, card_path)
    finally:
        tmp_w.unlink(missing_ok=True)
        tmp_c.unlink(missing_ok=True)
    return weights


def file_digest(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(weights: Path, card_path: Path, card: ModelCard) -> None:
    """Refuse weights whose sha256 differs from the card's; warn once per file when the card records none."""
    if not card.weights_sha256:
        if str(card_path) not in _UNVERIFIED:
            _UNVERIFIED.add(str(card_path))
            warnings.warn(f"{card_path} records no digest of its weights, so {weights} cannot be verified; save the "
                          "model again (napari_hires.models.save_model) to record one", UnverifiedWeightsWarning,
                          stacklevel=3)
        return
    found = file_digest(weights)
    if found != card.weights_sha256:
        raise HiresError(
            f"{weights} does not match the sha256 its card {card_path} records ({found[:16]}... instead of "
            f"{card.weights_sha256[:16]}...): the file was damaged or changed after it was saved; copy both files "
            "again from where they came from or, if the weights were changed on purpose, re-import them (save a "
            "model holding them with napari_hires.models.save_model)"
        )


def _read_weights(weights: Path) -> dict[str, torch.Tensor]:
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(weights))
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise HiresError(f"{weights} is not a readable safetensors file ({err})") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:
        raise HiresError(
            f"refusing to load {weights}: it is not a plain tensor checkpoint loadable with weights_only=True "
            f"({type(err).__name__}); napari-hires never unpickles code. Convert it to .safetensors in a trusted "
            "environment."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HiresError(f"{weights} does not hold a state dict of tensors")
    return state


def _import_without_card(path: Path, card_path: Path) -> HiresModel:
    """A published checkpoint given where a model file is accepted: imported, or an error saying what was looked
    for (a card, or a checkpoint of a family napari-hires recognises)."""
    from napari_hires.models.importers import import_checkpoint

    try:
        return import_checkpoint(path)
    except HiresError as err:
        raise HiresError(f"{path} has no model card ({card_path}) and was not imported as a published checkpoint: "
                         f"{err}") from None


def load_weights(model: HiresModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model``, or one error listing the missing and unexpected tensors and the first shape
    mismatch."""
    from napari_hires.models.checkpoints import check_tensors

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_tensors(expected, state, source, model.name or type(model).__name__,
                  "Check that the card's architecture and overrides (channels, classes, widths) are those the weights "
                  "were saved with.")
    model.load_state_dict(state, strict=True)


def load_model(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> HiresModel:
    """Rebuild the model a card describes and load its weights; it declares the card (``model.card``) and that it is
    trained. A published checkpoint without a card (HCT, timm MaxViT, MAXIM ``.npz``, xT) is imported instead."""
    from napari_hires.models.checkpoints import CHECKPOINT_SUFFIXES

    weights, card_path = _paths(path)
    if Path(path).suffix.lower() in CHECKPOINT_SUFFIXES and not card_path.exists() and Path(path).is_file():
        return _import_without_card(Path(path), card_path).to(device)
    if not weights.exists():
        raise FileNotFoundError(f"no model weights at {weights}")
    if not card_path.exists():
        raise HiresError(
            f"{weights} has no model card: expected {card_path}. A card (JSON) names the architecture, task and "
            "channels; save models with napari_hires.models.save_model, or write the card beside the weights."
        )
    card = ModelCard.read(card_path)
    verify_weights(weights, card_path, card)
    model = create_model(card.architecture, **card.overrides)
    if model.in_channels != card.in_channels or model.out_channels != card.out_channels:
        raise HiresError(
            f"{card_path} says {card.in_channels} input / {card.out_channels} output channels but "
            f"{card.architecture} with overrides {card.overrides} has {model.in_channels} / {model.out_channels}; "
            "put in_channels / num_classes in the card's overrides"
        )
    load_weights(model, _read_weights(weights), str(weights))
    model.card, model.trained = card, True
    model.halo, model.tile_size = card.halo, card.tile_size  # a trained model's card holds its measured halo
    return model.to(device).eval()
