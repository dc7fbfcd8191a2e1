"""Editable label stores: check out a full-resolution window, commit it back, keep every pyramid level in step."""

from napari_hires.labels.store import Box, EditSession, LabelStore

__all__ = ["Box", "EditSession", "LabelStore"]
