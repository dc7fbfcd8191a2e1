"""napari-hires: multi-gigapixel images in napari, with tiled high-resolution models.

Importing the package is cheap: torch, Qt and napari are imported only by the modules that need them.
"""

__version__ = "0.1.0"
