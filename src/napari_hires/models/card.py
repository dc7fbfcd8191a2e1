"""The model card: everything needed to rebuild, feed and describe a model, stored as JSON beside its weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from napari_hires.errors import HiresError

CARD_VERSION = 1


@dataclass
class Normalization:
    """How raw pixels become model input: ``(pixel * scale - mean) / std`` per channel."""

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
    version: int = CARD_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

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
        if raw.get("version", CARD_VERSION) > CARD_VERSION:
            raise HiresError(f"{source} is card version {raw['version']}; this napari-hires reads up to {CARD_VERSION}")
        raw["normalization"] = Normalization(**raw.get("normalization", {}))
        raw["class_names"] = {int(k): v for k, v in raw.get("class_names", {}).items()}
        raw["class_colors"] = {int(k): list(v) for k, v in raw.get("class_colors", {}).items()}
        return cls(**raw)

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        path = Path(path)
        return cls.from_json(path.read_text(), source=str(path))
