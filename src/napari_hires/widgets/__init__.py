"""Thin napari widgets over io, engine, labels and training; the only place Qt is imported."""
