"""The model card: everything needed to rebuild, feed and describe a model, stored as JSON beside its weights."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_hires.errors import HiresError

CARD_VERSION = 1
#: What a model does; the engine writes labels, an image or a heatmap accordingly.
TASKS = ("segmentation", "restoration", "classification")
#: Units of a card's ``pixel_size``, as OME-NGFF names them: micrometres for microscopy, metres for remote sensing.
PIXEL_UNITS = ("micrometer", "meter")
#: Fields written only when set, so that a card without them stays readable by a napari-hires that predates them
#: (whose reader refuses unknown fields): adding them needs no new card version.
_OPTIONAL = ("pixel_size", "pixel_unit")


@dataclass
class Normalization:
    """How pixels become model input: ``(v - mean) / std`` per channel, ``v`` on the model's 0..1 scale.

    ``scale`` is 1 / the largest raw value of the images the model learnt from (1/255: 8-bit images). The engine puts
    every image on the 0..1 scale by that image's own range (engine/intensity.py), so for other bit depths ``scale``
    records the training data rather than scaling the input.
    """

    scale: float = 1 / 255
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])


@dataclass
class ModelCard:
    """Architecture (a registry name), overrides to its configuration, task, I/O and tiling facts, provenance."""

    architecture: str
    task: str
    in_channels: int
    out_channels: int
    overrides: dict[str, Any] = field(default_factory=dict)
    normalization: Normalization = field(default_factory=Normalization)
    class_names: dict[int, str] = field(default_factory=dict)
    class_colors: dict[int, list[float]] = field(default_factory=dict)
    input_multiple: int = 1
    halo: int = 0
    tile_size: int = 512
    tiling: str = ""  # how the window and halo are chosen, in words
    description: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""  # digest of the weights file, written by save_model and checked by load_model
    #: Physical size of one input pixel of the images the model learnt from, in ``pixel_unit``; None when unknown.
    #: ``predict`` runs on the image level whose pixel size matches it (engine/resolution.py).
    pixel_size: float | None = None
    pixel_unit: str | None = None  # one of PIXEL_UNITS, set with pixel_size
    version: int = CARD_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        for name in _OPTIONAL:
            if data[name] is None:
                del data[name]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> "ModelCard":
        """Parse a card, with errors that name the file and the bad or missing field."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise HiresError(f"{source} is not valid JSON ({err}); re-save the model with napari_hires.models.save_model") from None
        if not isinstance(raw, dict):
            raise HiresError(f"{source} must hold a JSON object, not {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        missing = [f.name for f in fields(cls) if f.name in ("architecture", "task", "in_channels", "out_channels")
                   and f.name not in raw]
        if missing:
            raise HiresError(f"{source} lacks {', '.join(missing)}; a card needs the architecture, task and channels")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise HiresError(f"{source} has unknown fields {unknown}; it may come from a newer napari-hires")
        if _whole(raw.get("version")) and raw["version"] > CARD_VERSION:
            raise HiresError(f"{source} is card version {raw['version']}; this napari-hires reads up to {CARD_VERSION}")
        raw["normalization"] = _normalization(raw.get("normalization", {}), source)
        raw["class_names"] = _by_label(raw.get("class_names", {}), "class_names", source)
        raw["class_colors"] = _by_label(raw.get("class_colors", {}), "class_colors", source)
        return cls(**raw).validate(source)

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        path = Path(path)
        return cls.from_json(path.read_text(), source=str(path))

    def validate(self, source: str = "model card") -> "ModelCard":
        """Check every field's type and range (returns the card); errors name ``source``, the field, the bad value
        and what is allowed, so a hand-edited card fails on load rather than as odd tiles or wrong output."""

        def refuse(name: str, value: Any, allowed: str) -> None:
            raise HiresError(f"{source}: {name} is {value!r}; it must be {allowed}")

        if not isinstance(self.architecture, str) or not self.architecture:
            refuse("architecture", self.architecture, "a registered model name")
        if self.task not in TASKS:
            refuse("task", self.task, "one of " + ", ".join(TASKS))
        for name in ("in_channels", "out_channels", "input_multiple", "tile_size"):
            if not _whole(getattr(self, name)) or getattr(self, name) < 1:
                refuse(name, getattr(self, name), "a whole number of at least 1")
        if not _whole(self.halo) or self.halo < 0:
            refuse("halo", self.halo, "a whole number of 0 or more")
        if 2 * self.halo >= self.tile_size:
            refuse("halo", self.halo, f"less than half of tile_size ({self.tile_size}): neighbouring tiles overlap "
                                      "by twice the halo, and the overlap must be smaller than a tile")
        norm, channels = self.normalization, self.in_channels
        if not _number(norm.scale) or norm.scale <= 0:
            refuse("normalization.scale", norm.scale, "a number greater than 0")
        per_channel = f"{channels} number{'s' if channels != 1 else ''} (one per input channel)"
        why = f", as in_channels is {channels}"
        if not isinstance(norm.mean, list) or len(norm.mean) != channels or not all(map(_number, norm.mean)):
            refuse("normalization.mean", norm.mean, per_channel + why)
        if (not isinstance(norm.std, list) or len(norm.std) != channels
                or not all(_number(v) and v > 0 for v in norm.std)):
            refuse("normalization.std", norm.std, per_channel + ", each greater than 0" + why)
        for name in ("class_names", "class_colors"):
            table = getattr(self, name)
            if not isinstance(table, dict):
                refuse(name, table, "an object mapping labels to " + ("names" if name == "class_names" else "colours"))
            for label in table:
                if self.task == "restoration":
                    raise HiresError(f"{source}: {name} has label {label}; a restoration model has no classes")
                if not _whole(label) or not 0 <= label < self.out_channels:
                    raise HiresError(f"{source}: {name} has label {label}; labels must be 0 to "
                                     f"{self.out_channels - 1} (out_channels is {self.out_channels})")
        for label, text in self.class_names.items():
            if not isinstance(text, str) or not text:
                refuse(f"class_names[{label}]", text, "a non-empty name")
        for label, rgba in self.class_colors.items():
            if (not isinstance(rgba, list) or len(rgba) not in (3, 4)
                    or not all(_number(v) and 0 <= v <= 1 for v in rgba)):
                refuse(f"class_colors[{label}]", rgba, "3 or 4 numbers from 0 to 1 (RGB or RGBA)")
        for name in ("overrides", "provenance", "metrics"):
            if not isinstance(getattr(self, name), dict):
                refuse(name, getattr(self, name), "an object")
        for name in ("tiling", "description"):
            if not isinstance(getattr(self, name), str):
                refuse(name, getattr(self, name), "text")
        digest = self.weights_sha256
        if not isinstance(digest, str) or digest and (len(digest) != 64 or set(digest) - set("0123456789abcdef")):
            refuse("weights_sha256", digest, "64 hexadecimal digits (a sha256), or absent")
        if self.pixel_size is not None and (not _number(self.pixel_size) or self.pixel_size <= 0):
            refuse("pixel_size", self.pixel_size, "a number greater than 0, or absent")
        if (self.pixel_size is None) != (self.pixel_unit is None):
            refuse("pixel_unit", self.pixel_unit, "given with pixel_size and only with it")
        if self.pixel_unit is not None and self.pixel_unit not in PIXEL_UNITS:
            refuse("pixel_unit", self.pixel_unit, "one of " + ", ".join(PIXEL_UNITS))
        if not _whole(self.version) or not 1 <= self.version <= CARD_VERSION:
            refuse("version", self.version, f"a whole number from 1 to {CARD_VERSION}")
        return self


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _normalization(raw: Any, source: str) -> Normalization:
    """The card's normalisation object, refusing what is not one (its values are checked by validate)."""
    if not isinstance(raw, dict):
        raise HiresError(f"{source}: normalization is {raw!r}; it must be an object with scale, mean and std")
    unknown = sorted(set(raw) - {f.name for f in fields(Normalization)})
    if unknown:
        raise HiresError(f"{source}: normalization has unknown fields {unknown}; it takes scale, mean and std")
    return Normalization(**raw)


def _by_label(raw: Any, name: str, source: str) -> dict[int, Any]:
    """A class table with its JSON keys (strings) turned back into label values."""
    if not isinstance(raw, dict):
        raise HiresError(f"{source}: {name} is {raw!r}; it must be an object mapping labels to values")
    table = {}
    for key, value in raw.items():
        try:
            table[int(key)] = list(value) if name == "class_colors" and isinstance(value, (list, tuple)) else value
        except ValueError:
            raise HiresError(f"{source}: {name} has label {key!r}; labels must be whole numbers") from None
    return table
