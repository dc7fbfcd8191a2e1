"""Pixels in and out: readers, the synthetic slide and the pyramid builder, all returning :class:`Pyramid`."""

from napari_hires.io.pyramid import Pyramid

__all__ = ["Pyramid", "open_image", "synthetic_slide"]


def __getattr__(name: str):  # lazy: importing napari_hires.io must not pull tifffile/zarr readers
    if name == "open_image":
        from napari_hires.io.readers import open_image

        return open_image
    if name == "synthetic_slide":
        from napari_hires.io.synthetic import synthetic_slide

        return synthetic_slide
    raise AttributeError(name)
