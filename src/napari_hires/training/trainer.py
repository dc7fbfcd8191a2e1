"""Whole training jobs, headless: fine-tune on corrected labels, or learn to denoise an image on its own.

Each job reads the regions, holds about a fifth of the labelled pixels out by region (:mod:`.split`), trains while
scoring them, and saves the best state as a model file whose card records where the weights came from (base model,
data, regions, held-out cells, settings, losses) and its held-out scores (before, best and its step, final). A job is a generator of training steps (``fine_tune_steps``,
``self_supervised_steps``) that the API and ``napari-hires train`` drain (``fine_tune``, ``train_self_supervised``)
and the Fine-tune widget hands to napari's worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Generator, Sequence

from napari_hires.engine.events import drain
from napari_hires.engine.runner import CancelToken
from napari_hires.errors import HiresError, OutputExistsError
from napari_hires.models.base import HiresModel
from napari_hires.models.card import ModelCard
from napari_hires.models.registry import create_model, untrained_note
from napari_hires.training.evaluate import HeldOutBlindSpot, HeldOutDice
from napari_hires.training.loop import (
    HeldOutScorer,
    StepInfo,
    TrainResult,
    TrainSettings,
    held_out_metrics,
    held_out_summary,
    settings_record,
    training_steps,
)
from napari_hires.training.losses import Objective, segmentation_objective
from napari_hires.training.sampling import IGNORE_INDEX, Patch, Region, TileSampler, read_patches
from napari_hires.training.selfsupervised import MASK_RATIO, blind_spot_objective
from napari_hires.training.split import Split, gap_for, split_patches

#: The restoration model trained when the user names none: a one-stage MAXIM small enough for CPU training.
SELF_SUPERVISED_MODEL = "maxim_nano"
SELF_SUPERVISED_OVERRIDES: dict[str, Any] = {"features": 8, "num_stages": 1}


@dataclass
class TrainingJob:
    """A finished (or cancelled) job: the trained model, how training went, and the file written (if any)."""

    model: HiresModel
    result: TrainResult
    path: Path | None
    zero_is_unlabelled: bool | None = None  # the label convention fine-tuning used (None: no labels)
    base_note: str = ""  # that the model fine-tuned had no trained weights, and what to use instead; empty if it had
    held_out_note: str = ""  # what was held out and how its score went (or why nothing was), in words

    @property
    def notes(self) -> str:
        """The job's notes for a one-line summary: "; "-joined, each after a "; "."""
        return "".join(f"; {n}" for n in (self.base_note, self.held_out_note) if n)


def _model_name(model: str | os.PathLike | HiresModel) -> str:
    """The base model as the user named it (its name, or its file), for messages and the card's provenance."""
    if isinstance(model, HiresModel):
        return model.name or type(model).__name__
    return os.fspath(model)


def trained_card(model: HiresModel, provenance: dict[str, Any], metrics: dict[str, Any] | None = None,
                 **fields: Any) -> ModelCard:
    """The card of a trained model: its old card (or a new one) with this training's provenance and metrics.

    The previous provenance is kept under ``previous`` so a chain of fine-tunings stays traceable; old metrics are
    dropped, since they described other weights.
    """
    from napari_hires.models.files import card_for

    base = model.card
    card = replace(base) if base is not None else card_for(model)
    card.provenance = {**provenance, "previous": base.provenance} if base is not None and base.provenance \
        else dict(provenance)
    if model.encoder and base is None:  # the pretrained backbone it started from
        card.provenance["encoder"] = dict(model.encoder)
    card.metrics = dict(metrics or {})
    for key, value in fields.items():
        setattr(card, key, value)
    return card


def save_trained(model: HiresModel, out: str | os.PathLike, card: ModelCard, *, overwrite: bool = False) -> Path:
    """Write the trained model file (weights + card); refuses to replace one unless ``overwrite``."""
    from napari_hires.models.files import _paths, save_model

    weights, card_path = _paths(out)
    if not overwrite and (weights.exists() or card_path.exists()):
        raise OutputExistsError(f"{weights} already exists; choose another --out or pass --overwrite")
    path = save_model(model, weights, card)
    model.card = card  # the card of the weights it now holds
    return path


def _check_out(out: str | os.PathLike | None, overwrite: bool, inputs: Sequence[Any]) -> None:
    """Fail before training, not after: an output that would write over an input (the image, the labels, the model
    trained from), that cannot be written, or that exists (unless ``overwrite``)."""
    if out is None:
        return
    from napari_hires.io.output_path import check_output, check_writable
    from napari_hires.models.files import _paths

    paths = []
    for item in inputs:
        path = item if isinstance(item, (str, os.PathLike)) else getattr(item, "source", None)
        if path is not None:  # a model may be named by either file or their stem
            paths.extend(p for p in (Path(path), *_paths(path)) if p.exists())
    weights, card_path = _paths(out)
    for path in (weights, card_path):
        check_output(path, paths)
    check_writable(weights)
    if not overwrite and (weights.exists() or card_path.exists()):
        raise OutputExistsError(f"{weights} already exists; choose another --out or pass --overwrite")


def _held_out_steps(
    net: HiresModel,
    patches: Sequence[Patch],
    objective: Objective,
    settings: TrainSettings,
    scorer: Callable[[Split], HeldOutScorer],
    cancel: CancelToken | None,
) -> Generator[StepInfo, None, tuple[TrainResult, Split, dict[str, Any], str]]:
    """Split ``patches``, train on the rest while ``scorer`` scores the held-out cells; returns the result, the
    split, the card's metrics and the held-out note."""
    split = split_patches(patches, settings.tile, gap_for(net.halo, settings.tile), fraction=settings.holdout, seed=settings.seed)
    score = scorer(split) if split.held_out else None
    result = yield from training_steps(net, TileSampler(split.train, settings.tile), objective, settings,
                                       cancel=cancel, held_out=score)
    metrics = {} if score is None else {"held_out": held_out_metrics(result, score)}
    note = "; ".join(n for n in (split.note, held_out_summary(result)) if n)
    return result, split, metrics, note


def fine_tune(
    image: Any,
    labels: Any,
    model: str | os.PathLike | HiresModel,
    out: str | os.PathLike | None = None,
    *,
    level: int = 0,
    regions: Sequence[Region] | None = None,
    ignore_index: int = IGNORE_INDEX,
    zero_is_unlabelled: bool | None = None,
    settings: TrainSettings | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    cancel: CancelToken | None = None,
    overwrite: bool = False,
) -> TrainingJob:
    """Train a segmentation model on the labelled pixels of ``labels`` (within ``regions``); save it to ``out``.

    Unlabelled pixels (``ignore_index``, or 0 with ``zero_is_unlabelled``) are left out of the loss; left ``None``,
    the convention is decided from the labels, and scribble-like ones are refused (``sampling.zero_convention``).
    ``callback`` hears each step. A cancelled job saves nothing. Drains :func:`fine_tune_steps`.
    """
    return drain(fine_tune_steps(image, labels, model, out, level=level, regions=regions, ignore_index=ignore_index,
                                 zero_is_unlabelled=zero_is_unlabelled, settings=settings, cancel=cancel,
                                 overwrite=overwrite), callback)


def fine_tune_steps(
    image: Any,
    labels: Any,
    model: str | os.PathLike | HiresModel,
    out: str | os.PathLike | None = None,
    *,
    level: int = 0,
    regions: Sequence[Region] | None = None,
    ignore_index: int = IGNORE_INDEX,
    zero_is_unlabelled: bool | None = None,
    settings: TrainSettings | None = None,
    cancel: CancelToken | None = None,
    overwrite: bool = False,
) -> Generator[StepInfo, None, TrainingJob]:
    """:func:`fine_tune` as a generator: yields each step's :class:`StepInfo`, returns the :class:`TrainingJob`."""
    settings = settings or TrainSettings()
    settings.check()
    _check_out(out, overwrite, [image, labels, model])
    net, base = create_model(model), _model_name(model)
    if net.task != "segmentation":
        raise HiresError(f"{base} is a {net.task} model; fine-tuning on labels needs a segmentation "
                         "model (for restoration use the self-supervised mode)")
    base_trained = net.trained is not False
    if net.encoder and not base_trained:
        base_note = (f"the head started from random weights and the encoder from {net.encoder['from']}, trained at "
                     f"{settings.encoder_lr:g} x the learning rate")
    else:
        base_note = "" if base_trained else untrained_note(
            net.name, "fine-tuning started from random weights, which needs far more labels and steps than trained "
            "ones")
    patches = read_patches(image, labels, level=level, regions=regions, num_classes=net.out_channels,
                           ignore_index=ignore_index, zero_is_unlabelled=zero_is_unlabelled, seed=settings.seed)
    result, split, metrics, note = yield from _held_out_steps(
        net, patches, segmentation_objective(), settings,
        lambda s: HeldOutDice(s, device=settings.device, precision=settings.precision), cancel)
    path = None
    if out is not None and not result.cancelled:
        provenance = {
            "trained_by": "napari_hires.training.fine_tune",
            "base_model": base,
            "base_trained": base_trained,
            "objective": "cross-entropy + soft Dice on labelled pixels",
            "data": {"image": _origin(image), "labels": _origin(labels), "level": level,
                     "regions": [list(r) for r in regions] if regions else "whole level",
                     "labelled_pixels": int(sum(len(p.labelled) for p in patches)),
                     "zero_is_unlabelled": patches[0].zero_is_unlabelled, "held_out": split.record()},
            "settings": settings_record(settings, result),
        }
        extra = {**_class_fields(net, labels), **trained_at(image, level)}
        path = save_trained(net, out, trained_card(net, provenance, metrics, **extra), overwrite=overwrite)
    return TrainingJob(net, result, path, patches[0].zero_is_unlabelled, base_note, note)


def train_self_supervised(
    image: Any,
    model: str | os.PathLike | HiresModel | None = None,
    out: str | os.PathLike | None = None,
    *,
    level: int = 0,
    regions: Sequence[Region] | None = None,
    mask_ratio: float = MASK_RATIO,
    settings: TrainSettings | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    cancel: CancelToken | None = None,
    overwrite: bool = False,
) -> TrainingJob:
    """Train a restoration model (a small MAXIM by default) to denoise ``image`` from the image alone (blind spot).

    Tiles come from ``regions`` (level-0 boxes) of the pyramid ``level``, or random windows of it. No intensity
    jitter: it would change the noise the model learns to remove. ``callback`` hears each step. A cancelled job
    saves nothing. Drains :func:`self_supervised_steps`.
    """
    return drain(self_supervised_steps(image, model, out, level=level, regions=regions, mask_ratio=mask_ratio,
                                       settings=settings, cancel=cancel, overwrite=overwrite), callback)


def self_supervised_steps(
    image: Any,
    model: str | os.PathLike | HiresModel | None = None,
    out: str | os.PathLike | None = None,
    *,
    level: int = 0,
    regions: Sequence[Region] | None = None,
    mask_ratio: float = MASK_RATIO,
    settings: TrainSettings | None = None,
    cancel: CancelToken | None = None,
    overwrite: bool = False,
) -> Generator[StepInfo, None, TrainingJob]:
    """:func:`train_self_supervised` as a generator: yields each step's :class:`StepInfo`, returns the
    :class:`TrainingJob`."""
    settings = replace(settings or TrainSettings(), intensity=False)
    settings.check()
    _check_out(out, overwrite, [image, model])
    net = create_model(model) if model is not None else create_model(SELF_SUPERVISED_MODEL,
                                                                     **SELF_SUPERVISED_OVERRIDES)
    base = _model_name(model or SELF_SUPERVISED_MODEL)
    if net.task != "restoration":
        raise HiresError(f"{base} is a {net.task} model; self-supervised "
                         "training needs a restoration model such as maxim_nano")
    patches = read_patches(image, None, level=level, regions=regions, seed=settings.seed)
    result, split, metrics, note = yield from _held_out_steps(
        net, patches, blind_spot_objective(mask_ratio), settings,
        lambda s: HeldOutBlindSpot(s, settings.tile, ratio=mask_ratio, seed=settings.seed, device=settings.device,
                                   precision=settings.precision), cancel)
    path = None
    if out is not None and not result.cancelled:
        provenance = {
            "trained_by": "napari_hires.training.train_self_supervised",
            "base_model": base,
            "objective": f"Noise2Void blind spot: {mask_ratio:.2%} of pixels replaced by random neighbours, "
                         "squared error on those pixels against the noisy input; no clean target",
            "data": {"image": _origin(image), "level": level,
                     "regions": [list(r) for r in regions] if regions else
                     [[p.origin[0], p.origin[0] + p.image.shape[0], p.origin[1], p.origin[1] + p.image.shape[1]]
                      for p in patches], "held_out": split.record()},
            "settings": settings_record(settings, result),
        }
        path = save_trained(net, out, trained_card(net, provenance, metrics, **trained_at(image, level)),
                            overwrite=overwrite)
    return TrainingJob(net, result, path, held_out_note=note)


def trained_at(image: Any, level: int) -> dict[str, Any]:
    """The card's pixel_size and pixel_unit: those of ``level`` of the training image, or None when its metadata
    has none (a base model's size is not kept, as the new weights learnt from this image)."""
    from napari_hires.engine.source import opened
    from napari_hires.io.physical import pixel_size
    from napari_hires.io.pyramid import Pyramid

    image = opened(image)
    size = pixel_size(image, level) if isinstance(image, Pyramid) else None
    return {"pixel_size": size.value if size else None, "pixel_unit": size.unit if size else None}


def _origin(data: Any) -> str:
    """Where training data came from, for the card."""
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    return getattr(data, "source", None) or getattr(data, "name", None) or f"array {getattr(data, 'shape', '')}"


def _class_fields(net: HiresModel, labels: Any) -> dict[str, Any]:
    """Class names and colours from the labels when the model's card has none."""
    card = net.card
    if card is not None and card.class_names:
        return {}
    names = getattr(labels, "class_names", None) or {}
    colors = getattr(labels, "class_colors", None) or {}
    k = net.out_channels
    return {"class_names": {i: n for i, n in names.items() if i < k},
            "class_colors": {i: list(c) for i, c in colors.items() if i < k}}
