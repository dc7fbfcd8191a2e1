"""The physical pixel size of an image level, from the metadata of files written by each format's own library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.format import FormatV05
from ome_zarr.writer import write_image

from napari_hires.io.physical import PixelSize, pixel_size
from napari_hires.io.readers import open_image
from napari_hires.io.synthetic import synthetic_slide

RNG = np.random.default_rng(0)


def _ome_zarr(path: Path, units: dict[str, str] | None, scale: float = 0.5) -> Path:
    """A 256 x 256 image written by ome-zarr-py with levels at 1/2 and 1/4, its level-0 scale ``scale`` per pixel."""
    group = zarr.open_group(path, mode="w", zarr_format=3)
    data = RNG.integers(0, 255, (256, 256), dtype=np.uint8)
    write_image(data, group, axes="yx", fmt=FormatV05(), scale_factors=(2, 4), scale={"y": scale, "x": scale},
                axes_units=units, storage_options={"chunks": (64, 64)})
    return path


def test_ome_zarr_scale_and_micrometer_units_give_each_levels_pixel_size(tmp_path):
    pyr = open_image(_ome_zarr(tmp_path / "um.zarr", {"y": "micrometer", "x": "micrometer"}))
    assert [pixel_size(pyr, k) for k in range(3)] == [PixelSize(0.5, "micrometer"), PixelSize(1.0, "micrometer"),
                                                      PixelSize(2.0, "micrometer")]


def test_ome_zarr_in_nanometres_is_given_in_micrometres(tmp_path):
    pyr = open_image(_ome_zarr(tmp_path / "nm.zarr", {"y": "nanometer", "x": "nanometer"}, scale=250.0))
    size = pixel_size(pyr, 0)
    assert size.unit == "micrometer" and size.value == pytest.approx(0.25)


def test_ome_zarr_in_metres_stays_in_metres(tmp_path):
    """A remote-sensing image, 10 m per pixel."""
    pyr = open_image(_ome_zarr(tmp_path / "m.zarr", {"y": "meter", "x": "meter"}, scale=10.0))
    assert pixel_size(pyr, 1) == PixelSize(20.0, "meter") and pixel_size(pyr, 1).describe() == "20 m/px"


def test_ome_zarr_scale_without_units_has_no_pixel_size(tmp_path):
    assert pixel_size(open_image(_ome_zarr(tmp_path / "plain.zarr", None)), 0) is None


def test_ome_tiff_physical_size_in_its_unit(tmp_path):
    path = tmp_path / "cells.ome.tif"
    data = RNG.integers(0, 255, (128, 128), dtype=np.uint8)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 325.0, "PhysicalSizeY": 325.0,
                                                     "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm"})
    size = pixel_size(open_image(path), 0)
    assert size.unit == "micrometer" and size.value == pytest.approx(0.325)


def test_svs_mpp_in_the_image_description(tmp_path):
    path = tmp_path / "slide.svs"
    data = RNG.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    header = "Aperio Image Library v12.0.15\r\n256x256 [0,0 256x256] (128x128) RAW|AppMag = 40|MPP = 0.2520"
    with tifffile.TiffWriter(path) as tw:
        kw = {"photometric": "rgb", "metadata": None}
        tw.write(data, tile=(128, 128), description=header, **kw)
        tw.write(data[::16, ::16], description="Aperio Image Library v12.0.15\r\nthumbnail", **kw)
        tw.write(data[::2, ::2], tile=(64, 64), description="Aperio Image Library", **kw)
    pyr = open_image(path)
    assert pixel_size(pyr, 0) == PixelSize(0.252, "micrometer") and pixel_size(pyr, 1) == PixelSize(0.504,
                                                                                                    "micrometer")


def test_tiff_resolution_tags_in_pixels_per_centimetre(tmp_path):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), resolution=(40000, 40000), resolutionunit="CENTIMETER")
    assert pixel_size(open_image(path), 0) == PixelSize(0.25, "micrometer")


def test_imagej_tiff_resolution_in_microns(tmp_path):
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "micron"})
    assert pixel_size(open_image(path), 0) == PixelSize(0.5, "micrometer")


@pytest.mark.parametrize("resolution, unit", [((72, 72), "INCH"), ((1, 1), "NONE")])
def test_tiff_screen_or_unitless_resolution_is_no_pixel_size(tmp_path, resolution, unit):
    """72 dpi is what image editors write when nothing was measured; a unitless resolution measures nothing."""
    path = tmp_path / "editor.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), resolution=resolution, resolutionunit=unit)
    assert pixel_size(open_image(path), 0) is None


def test_synthetic_slide_stands_for_a_20x_scan_while_its_scale_stays_in_pixels():
    image, _ = synthetic_slide((1024, 1024), min_size=256)
    assert image.scale == (1.0, 1.0, 1.0)
    assert [pixel_size(image, k) for k in range(3)] == [PixelSize(0.5, "micrometer"), PixelSize(1.0, "micrometer"),
                                                        PixelSize(2.0, "micrometer")]
