"""The marker that tells a finished napari-hires store from one whose writer was interrupted."""

from __future__ import annotations

from typing import Any

#: Root attribute holding {"state": "writing" | "complete"} (and, while writing, the job's "run" record).
MARKER = "napari_hires"
#: Root attribute of a complete store written by a job with a run record: that record, so that a rerun of the same
#: job finds its work done instead of refusing the store.
RUN_RECORD = "napari_hires_run"


def is_incomplete(attrs: dict[str, Any]) -> bool:
    """True for root attributes of a store that a writer started but never finished."""
    return attrs.get(MARKER, {}).get("state") == "writing" and "multiscales" not in attrs.get("ome", {})
