"""Named model configurations: ``list_models()`` and ``create_model(name, **overrides)``, as in timm; trained weights
of an architecture are tags of it (``hct_tiny_seg.synthetic``).

Built-in families register themselves when their module is imported; third-party packages add models through the
``napari_hires.models`` entry-point group (each entry point names a module or callable that registers on load).
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import threading
import zlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable

from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel, Task

ENTRY_POINT_GROUP = "napari_hires.models"
_BUILTIN_FAMILIES = ("hct", "maxvit", "maxim", "xt", "shipped")  # shipped: trained demo weights
_PUBLISHED = ("hct", "maxvit", "maxim", "xt")  # importers of the published checkpoints (models/published/)


@dataclass(frozen=True)
class ModelEntry:
    """One registered configuration: how to build it and what it is for; a weights tag (``name`` is then
    ``architecture.tag``) builds its architecture with trained weights."""

    name: str
    family: str
    task: Task
    builder: Callable[..., HiresModel]
    description: str = ""
    published: bool = False  # a configuration from the paper (vs. a small one for CPU demos and tests)
    trained: bool = False  # the builder loads trained weights (vs. a random initialisation, for trying the pipeline)
    trained_on: str = ""  # what the trained weights were trained on, in a few words
    tag: str = ""  # the weights tag of ``architecture.tag`` names

    @property
    def architecture(self) -> str:
        """The registered architecture these weights are for (the name itself for an architecture)."""
        return self.name[: -len(self.tag) - 1] if self.tag else self.name


_REGISTRY: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}  # older names of tagged weights -> their ``architecture.tag`` names
_loaded = False
_load_lock = threading.RLock()  # widgets list models from worker threads while the main thread may be loading


def _add(entry: ModelEntry) -> None:
    known = _REGISTRY.get(entry.name)
    if known is not None and known.builder is not entry.builder:
        raise HiresError(f"model name {entry.name!r} is already registered by {known.family}")
    _REGISTRY[entry.name] = entry


def register_model(name: str, *, family: str, task: Task, description: str = "", published: bool = False,
                   trained: bool = False, trained_on: str = ""):
    """Decorator for a builder ``(**overrides) -> HiresModel`` that registers it under ``name``; ``trained`` says
    that the builder loads trained weights (trained on ``trained_on``)."""

    def wrap(builder: Callable[..., HiresModel]) -> Callable[..., HiresModel]:
        _add(ModelEntry(name, family, task, builder, description, published, trained, trained_on))
        return builder

    return wrap


def register_weights(architecture: str, tag: str, loader: Callable[[], HiresModel], *, trained_on: str,
                     description: str = "", alias: str | None = None) -> None:
    """Register trained weights of the registered ``architecture`` as ``architecture.tag``; ``loader()`` builds the
    model with them; ``alias`` is an older name that keeps working."""
    base = _REGISTRY.get(architecture)
    if base is None:
        raise HiresError(f"cannot register weights {tag!r} for {architecture!r}: register the architecture first")
    name = f"{architecture}.{tag}"
    _add(ModelEntry(name, base.family, base.task, loader, description, base.published, True, trained_on, tag))
    if alias is not None:
        _ALIASES[alias] = name


def weight_tags(architecture: str) -> list[str]:
    """The tags of the trained weights registered for ``architecture`` (``synthetic`` for ``hct_tiny_seg``)."""
    _ensure_loaded()
    return sorted(e.tag for e in _REGISTRY.values() if e.tag and e.architecture == architecture)


def _ensure_loaded() -> None:
    """Import the built-in families and entry points once; other threads wait until the registry is whole."""
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if _loaded:
            return
        for module in (*_BUILTIN_FAMILIES, *(f"published.{f}" for f in _PUBLISHED)):
            try:
                importlib.import_module(f"napari_hires.models.{module}")
            except ModuleNotFoundError as err:
                if err.name != f"napari_hires.models.{module}":
                    raise
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            loaded = ep.load()
            if callable(loaded):
                loaded()
        _loaded = True


def untrained_note(name: str, consequence: str = "its output is random, for trying the pipeline only") -> str:
    """That the architecture ``name`` has no trained weights, the ``consequence``, and which trained models (of its
    task) to use instead."""
    entry = model_entry(name)
    trained = [n for n, e in sorted(_REGISTRY.items()) if e.trained and e.task == entry.task]
    instead = f"a trained model ({', '.join(trained)})" if trained else "a trained model"
    return f"{name} has no trained weights: {consequence}; use {instead} or a model file"


def list_models(pattern: str = "*", task: Task | None = None, *, trained: bool | None = None,
                aliases: bool = True) -> list[str]:
    """Sorted names of registered models matching a glob ``pattern`` (and ``task``, and ``trained``, when given);
    tagged weights are listed as ``architecture.tag`` and, with ``aliases``, by their older names too."""
    _ensure_loaded()
    names = [*_REGISTRY, *(_ALIASES if aliases else ())]
    return sorted(
        n for n in names if fnmatch.fnmatch(n, pattern) and (task is None or model_entry(n).task == task)
        and (trained is None or model_entry(n).trained == trained)
    )


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name`` (an architecture, ``architecture.tag`` or an older alias of one), or a clear
    error listing close names, or the known tags of the architecture."""
    _ensure_loaded()
    name = _ALIASES.get(name, name)
    if name in _REGISTRY:
        return _REGISTRY[name]
    architecture, _, tag = name.rpartition(".")
    if architecture in _REGISTRY:
        tags = weight_tags(architecture)
        if not tags:
            raise HiresError(f"{architecture} has no trained weights (no weights tags); use {architecture} for its "
                             "random initialisation, or a model file")
        raise HiresError(f"unknown weights tag {tag!r} for {architecture}; known tags: {', '.join(tags)} "
                         f"(as in {architecture}.{tags[0]})")
    import difflib

    close = difflib.get_close_matches(name, [*_REGISTRY, *_ALIASES], n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise HiresError(f"unknown model {name!r}.{hint} `napari_hires.models.list_models()` lists the known ones.")


def _is_file(text: str) -> bool:
    """Whether ``text`` names a model file (by its suffix, or an existing path that is no registered name)."""
    from napari_hires.models.checkpoints import CHECKPOINT_SUFFIXES
    from napari_hires.models.files import WEIGHT_SUFFIXES

    if text.lower().endswith((*WEIGHT_SUFFIXES, *CHECKPOINT_SUFFIXES, ".json")):
        return True
    _ensure_loaded()
    return os.path.exists(text) and text not in _REGISTRY and text not in _ALIASES


def create_model(model: str | os.PathLike | HiresModel, *, encoder: str | os.PathLike | HiresModel | None = None,
                 **overrides: Any) -> HiresModel:
    """The one way in for models: a registered name (``overrides`` change its configuration), a name with a weights
    tag (``hct_tiny_seg.synthetic``), a model file (``.safetensors`` + card, as :func:`load_model`; a published
    checkpoint without a card is imported, as :func:`import_checkpoint`) or an instance (returned as it is, once
    checked to be a :class:`HiresModel`).

    An untrained architecture is initialised from a seed fixed by its name, in a forked RNG: the same name gives the
    same weights in every process (so a rerun resumes its own store), and the caller's random state is left as it was.
    The model declares what it is (``architecture``, ``overrides``, ``tag``, ``card``, ``trained``).

    ``encoder`` (a model file, a published checkpoint or a trained name of the same family) gives an architecture
    its backbone: configuration and weights, with a fresh head (``models/encoders.py``); ``model.encoder`` says
    where it came from.
    """
    import torch

    if isinstance(model, torch.nn.Module):
        if not isinstance(model, HiresModel):
            raise HiresError(
                f"{type(model).__name__} is not a napari_hires HiresModel: wrap it so that it states its task, "
                "channels, input multiple and halo"
            )
        _no_overrides(overrides, f"{model.name or type(model).__name__} is already built")
        return model
    text = os.fspath(model)
    if encoder is not None and (_is_file(text) or model_entry(text).tag):
        raise HiresError(f"{text} holds trained weights already; an encoder is given to an architecture "
                         "(such as maxvit_tiny_seg) whose head is to be trained")
    if _is_file(text):
        from napari_hires.models.files import load_model

        _no_overrides(overrides, f"{text} is a model file, whose card fixes its configuration")
        return load_model(text)
    entry = model_entry(text)
    if entry.tag:
        _no_overrides(overrides, f"{entry.name} holds trained weights, whose configuration is fixed "
                                 f"(build {entry.architecture} to change it, untrained)")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(entry.name.encode()))
            if encoder is None:
                net = entry.builder(**overrides)
            else:
                from napari_hires.models.encoders import build_with_encoder

                net, overrides = build_with_encoder(entry.name, encoder, entry.builder, overrides)
    except TypeError as err:
        raise HiresError(f"cannot build {text!r} with overrides {overrides}: {err}") from None
    if entry.tag:  # built from its model file, which declared the rest
        net.tag = entry.tag
    else:
        net.architecture, net.overrides, net.trained = entry.name, dict(overrides), entry.trained
    return net


def _no_overrides(overrides: dict[str, Any], why: str) -> None:
    if overrides:
        raise HiresError(f"{why}: drop the options {', '.join(sorted(overrides))}")
