"""Importers of the papers' published checkpoints, one module per family, each registered with
:func:`napari_hires.models.importers.register_importer`."""
