"""Named model configurations: ``list_models()`` and ``create_model(name, **overrides)``, as in timm.

Built-in families register themselves when their module is imported; third-party packages add models through the
``napari_hires.models`` entry-point group (each entry point names a module or callable that registers on load).
"""

from __future__ import annotations

import fnmatch
import importlib
import threading
import zlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Callable

from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel, Task

ENTRY_POINT_GROUP = "napari_hires.models"
_BUILTIN_FAMILIES = ("hct", "maxvit", "maxim", "xt", "shipped")  # shipped: trained demo weights


@dataclass(frozen=True)
class ModelEntry:
    """One registered configuration: how to build it and what it is for."""

    name: str
    family: str
    task: Task
    builder: Callable[..., HiresModel]
    description: str = ""
    published: bool = False  # a configuration from the paper (vs. a small one for CPU demos and tests)
    trained: bool = False  # the builder loads trained weights (vs. a random initialisation, for trying the pipeline)


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False
_load_lock = threading.RLock()  # widgets list models from worker threads while the main thread may be loading


def register_model(name: str, *, family: str, task: Task, description: str = "", published: bool = False,
                   trained: bool = False):
    """Decorator for a builder ``(**overrides) -> HiresModel`` that registers it under ``name``; ``trained`` says
    that the builder loads trained weights."""

    def wrap(builder: Callable[..., HiresModel]) -> Callable[..., HiresModel]:
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise HiresError(f"model name {name!r} is already registered by {_REGISTRY[name].family}")
        _REGISTRY[name] = ModelEntry(name, family, task, builder, description, published, trained)
        return builder

    return wrap


def _ensure_loaded() -> None:
    """Import the built-in families and entry points once; other threads wait until the registry is whole."""
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if _loaded:
            return
        for family in _BUILTIN_FAMILIES:
            try:
                importlib.import_module(f"napari_hires.models.{family}")
            except ModuleNotFoundError as err:
                if err.name != f"napari_hires.models.{family}":
                    raise
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            loaded = ep.load()
            if callable(loaded):
                loaded()
        _loaded = True


def untrained_note(name: str) -> str:
    """Why the output of the untrained architecture ``name`` means nothing, and which trained models to use instead."""
    entry = model_entry(name)
    trained = [n for n, e in sorted(_REGISTRY.items()) if e.trained and e.task == entry.task]
    instead = f"a trained model ({', '.join(trained)})" if trained else "a trained model"
    return (f"{name} has no trained weights: its output is random, for trying the pipeline only; "
            f"use {instead} or a model file")


def list_models(pattern: str = "*", task: Task | None = None) -> list[str]:
    """Sorted names of registered models matching a glob ``pattern`` (and ``task`` when given)."""
    _ensure_loaded()
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (task is None or e.task == task)
    )


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``, or a clear error listing close names."""
    _ensure_loaded()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise HiresError(f"unknown model {name!r}.{hint} `napari_hires.models.list_models()` lists the known ones.")
    return _REGISTRY[name]


def create_model(name: str, **overrides) -> HiresModel:
    """Build a model by registered name; ``overrides`` change its configuration.

    An untrained architecture is initialised from a seed fixed by its name, in a forked RNG: the same name gives the
    same weights in every process (so a rerun resumes its own store), and the caller's random state is left as it was.
    The model remembers its name and overrides so that :func:`save_model` can write a card that rebuilds it.
    """
    import torch

    entry = model_entry(name)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(name.encode()))
            model = entry.builder(**overrides)
    except TypeError as err:
        raise HiresError(f"cannot build {name!r} with overrides {overrides}: {err}") from None
    model.registry_name, model.registry_overrides = name, dict(overrides)
    return model
