"""The demo weights shipped in ``napari_hires/weights``: tags of their architectures, loaded from the package.

``create_model("hct_tiny_seg.synthetic")`` (or its older name ``hct_tiny_seg_synthetic``) rebuilds the architecture
its card names and loads the trained weights (``scripts/train_demo_weights.py`` makes them from the synthetic slide;
the cards hold their evaluation).
"""

from __future__ import annotations

from importlib.resources import as_file, files
from typing import NamedTuple

from napari_hires.errors import HiresError
from napari_hires.models import hct, maxim, maxvit, xt  # noqa: F401  (register the architectures of the weights)
from napari_hires.models.base import HiresModel
from napari_hires.models.registry import register_weights


class Shipped(NamedTuple):
    """Shipped weights: the architecture they are for, its task, and what they were trained on."""

    architecture: str
    task: str
    trained_on: str


#: file stem (``ARCHITECTURE_TAG``, also the weights' older registered name) -> what the weights are
SHIPPED = {
    "hct_tiny_seg_synthetic": Shipped("hct_tiny_seg", "segmentation", "the synthetic slide (4 tissue classes)"),
    "maxvit_nano_seg_synthetic": Shipped("maxvit_nano_seg", "segmentation",
                                         "the synthetic slide (4 tissue classes), with P=4 windows"),
    "xt_nano_seg_synthetic": Shipped("xt_nano_seg", "segmentation",
                                     "the synthetic slide (4 tissue classes), with 4 x 4 region windows"),
    "maxim_nano_denoise_synthetic": Shipped("maxim_nano", "restoration",
                                            "the synthetic slide's noise (one stage, F=8), to denoise it"),
}


def shipped_path(name: str):
    """Traversable of the weights file of a shipped model (``NAME.safetensors`` beside ``NAME.json``)."""
    return files("napari_hires") / "weights" / f"{name}.safetensors"


def load_shipped(name: str) -> HiresModel:
    """The shipped model ``name`` (a file stem) with its trained weights and card, in eval mode on the CPU."""
    from napari_hires.models.files import load_model

    weights = shipped_path(name)
    if not weights.is_file():
        raise HiresError(f"the shipped weights {name}.safetensors are missing from this installation; "
                         "run scripts/train_demo_weights.py or reinstall napari-hires")
    with as_file(weights) as path:
        return load_model(path)


def _loader(name: str):
    """A registry builder with no options: the shipped weights fix the configuration."""

    def loader() -> HiresModel:
        return load_shipped(name)

    loader.__name__ = name
    return loader


for _stem, _shipped in SHIPPED.items():
    register_weights(_shipped.architecture, _stem[len(_shipped.architecture) + 1:], _loader(_stem),
                     trained_on=_shipped.trained_on, alias=_stem,
                     description=f"{_shipped.architecture} trained on {_shipped.trained_on}")
