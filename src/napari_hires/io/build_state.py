"""The marker that tells a finished napari-hires store from one whose writer was interrupted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Root attribute holding {"state": "writing" | "complete"} (and, while writing, the job's "run" record).
MARKER = "napari_hires"
#: Root attribute of a complete store written by a job with a run record: that record, so that a rerun of the same
#: job finds its work done instead of refusing the store.
RUN_RECORD = "napari_hires_run"


#: Metadata documents, one of which every zarr store (v3, or v2 group or array) has at its root.
ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray")


def is_zarr(path: str | Path) -> bool:
    """True for a folder holding a zarr store's root metadata (any zarr format; its content is not read)."""
    return any((Path(path) / name).is_file() for name in ZARR_METADATA)


def store_marker(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(marker, root attributes) of the zarr v3 store at ``path`` when its root carries napari-hires's marker; None
    for anything else (no store, another tool's store, unreadable metadata). Reads the root document only."""
    try:
        doc = json.loads((Path(path) / "zarr.json").read_text(encoding="utf-8"))
        attrs = doc.get("attributes") or {}
        marker = attrs.get(MARKER)
    except (OSError, ValueError, AttributeError):
        return None
    return (marker, attrs) if isinstance(marker, dict) else None


def is_incomplete(attrs: dict[str, Any]) -> bool:
    """True for root attributes of a store that a writer started but never finished."""
    return attrs.get(MARKER, {}).get("state") == "writing" and "multiscales" not in attrs.get("ome", {})
