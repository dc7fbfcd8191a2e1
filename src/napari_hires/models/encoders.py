"""A dense model's encoder taken from a trained or published model of its family: ``create_model("maxvit_tiny_seg",
encoder=FILE)`` builds the segmenter with the encoder's backbone configuration and weights, and a fresh FPN head.

The encoder's configuration wins for everything that shapes the backbone (widths, depths, windows, padding); the
segmenter keeps its own head (classes, decoder width, which stages feed the FPN) and regularisation. Given other
input channels than the encoder's, the first convolution is adapted (its kernel averaged over the old channels and
spread over the new ones, so a grey image gives the features it gave before). Fine-tuning then trains the encoder
at a lower learning rate than the head (``TrainSettings.encoder_lr``), as the model card's settings record.
"""

from __future__ import annotations

import os
from dataclasses import fields
from typing import Any

import torch

from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel

#: family -> configuration fields of the task head and of training, which the segmenter keeps as its own; every
#: other field describes the backbone and comes from the encoder.
HEAD_FIELDS = {
    "maxvit": {"num_classes", "out_indices", "decoder_width", "drop_path_rate", "in_channels"},
    "hct": {"num_classes", "task", "decoder_width", "pool_padding", "attention_dropout", "in_channels"},
}


def encoder_overrides(architecture: str, source: HiresModel, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides that build ``architecture`` around ``source``'s backbone: its backbone fields, then the
    caller's ``overrides`` (a head field such as ``num_classes``, or ``in_channels`` to adapt the first conv)."""
    from napari_hires.models.registry import model_entry

    family = model_entry(architecture).family
    source_family = _family(source)
    if family not in HEAD_FIELDS:
        raise HiresError(f"{architecture} cannot take a pretrained encoder: encoders come from the "
                         f"{', '.join(sorted(HEAD_FIELDS))} families")
    if source_family != family:
        raise HiresError(f"the encoder {source.name or type(source).__name__} is a {source_family} model but "
                         f"{architecture} is a {family} model; give a {family} checkpoint or model file")
    kept = HEAD_FIELDS[family]
    taken = {f.name: getattr(source.config, f.name) for f in fields(source.config) if f.name not in kept}
    clash = sorted(k for k in overrides if k in taken and overrides[k] != taken[k])
    if clash:
        raise HiresError(f"{', '.join(clash)} of the encoder cannot be changed (the weights fix them): drop "
                         f"{', '.join(f'{k}={overrides[k]!r}' for k in clash)}")
    return {**taken, **overrides}


def _family(model: HiresModel) -> str:
    from napari_hires.models.registry import model_entry

    name = model.architecture or (model.card.architecture if model.card else None)
    if name is None:
        raise HiresError(f"{type(model).__name__} does not say its architecture, so it cannot serve as an encoder; "
                         "give a model file or a published checkpoint")
    return model_entry(name).family


def load_encoder(model: HiresModel, source: HiresModel, origin: str) -> None:
    """Copy ``source``'s backbone weights into ``model``'s (adapting the first conv to other input channels), or one
    error naming what does not fit; records where the encoder came from in ``model.encoder``."""
    from napari_hires.models.checkpoints import check_tensors

    wanted = model.backbone.state_dict()
    state = dict(source.backbone.state_dict())
    for key, tensor in state.items():  # the first conv: (out, in, k, k) with other input channels
        target = wanted.get(key)
        if (target is not None and tensor.ndim == 4 and target.ndim == 4 and tensor.shape[1] != target.shape[1]
                and tensor.shape[1] == source.in_channels and target.shape[1] == model.in_channels):
            state[key] = adapt_input_conv(tensor, model.in_channels)
    check_tensors({k: tuple(v.shape) for k, v in wanted.items()}, state, f"the encoder {origin}",
                  f"the {model.architecture} backbone", "Give an encoder of the same configuration.")
    model.backbone.load_state_dict(state, strict=True)
    card = source.card
    model.encoder = {
        "from": origin,
        "architecture": source.name or (card.architecture if card else None),
        **({"imported_from": card.provenance["imported_from"]} if card and "imported_from" in card.provenance else {}),
        **({"weights_sha256": card.weights_sha256} if card and card.weights_sha256 else {}),
    }


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-conv kernel (out, in, kh, kw) for ``channels`` inputs: the mean over the old inputs spread evenly, so
    an image whose channels all equal one grey image gives the response the old kernel gave that grey image."""
    old = weight.shape[1]
    return weight.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1) * (old / channels)


def build_with_encoder(architecture: str, encoder: str | os.PathLike | HiresModel, builder: Any,
                       overrides: dict[str, Any]) -> tuple[HiresModel, dict[str, Any]]:
    """``architecture`` (built by ``builder``) with the backbone of ``encoder`` (anything ``create_model`` takes),
    and the overrides that rebuild its configuration."""
    from napari_hires.models.registry import create_model

    source = create_model(encoder)
    origin = os.fspath(encoder) if not isinstance(encoder, torch.nn.Module) else (source.name or "a model")
    if not hasattr(source, "backbone"):
        raise HiresError(f"the encoder {origin} has no backbone to take (it is a {type(source).__name__})")
    if source.trained is False:
        raise HiresError(f"the encoder {origin} has no trained weights (a random initialisation); give a model "
                         "file, a published checkpoint or a trained name such as maxvit_nano_seg.synthetic")
    merged = encoder_overrides(architecture, source, overrides)
    model = builder(**merged)
    if not hasattr(model, "backbone"):
        raise HiresError(f"{architecture} has no backbone to take an encoder into")
    load_encoder(model, source, origin)
    return model, merged
