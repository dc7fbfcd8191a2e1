"""The marker that tells a finished napari-hires store from one whose writer was interrupted."""

from __future__ import annotations

from typing import Any

#: Root attribute holding {"state": "writing" | "complete"}.
MARKER = "napari_hires"


def is_incomplete(attrs: dict[str, Any]) -> bool:
    """True for root attributes of a store that a writer started but never finished."""
    return attrs.get(MARKER, {}).get("state") == "writing" and "multiscales" not in attrs.get("ome", {})
