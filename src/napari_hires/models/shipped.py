"""The demo weights shipped in ``napari_hires/weights``: registered by name, loaded from the package.

``create_model("hct_tiny_seg_synthetic")`` rebuilds the architecture its card names and loads the trained weights
(``scripts/train_demo_weights.py`` makes them from the synthetic slide; the cards hold their evaluation).
"""

from __future__ import annotations

from importlib.resources import as_file, files

from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel
from napari_hires.models.registry import register_model

#: registered name -> (family, task, description)
SHIPPED = {
    "hct_tiny_seg_synthetic": ("hct", "segmentation", "hct_tiny_seg trained on the synthetic slide (4 tissue classes)"),
    "maxvit_nano_seg_synthetic": ("maxvit", "segmentation",
                                  "maxvit_nano_seg (P=4) trained on the synthetic slide (4 tissue classes)"),
    "xt_nano_seg_synthetic": ("xt", "segmentation",
                              "xt_nano_seg (4 x 4 region windows) trained on the synthetic slide (4 tissue classes)"),
    "maxim_nano_denoise_synthetic": ("maxim", "restoration",
                                     "one-stage maxim_nano (F=8) denoising the synthetic slide's noise"),
}


def shipped_path(name: str):
    """Traversable of the weights file of a shipped model (``NAME.safetensors`` beside ``NAME.json``)."""
    return files("napari_hires") / "weights" / f"{name}.safetensors"


def load_shipped(name: str) -> HiresModel:
    """The shipped model ``name`` with its trained weights and card, in eval mode on the CPU."""
    from napari_hires.models.files import load_model

    weights = shipped_path(name)
    if not weights.is_file():
        raise HiresError(f"the shipped weights {name}.safetensors are missing from this installation; "
                         "run scripts/train_demo_weights.py or reinstall napari-hires")
    with as_file(weights) as path:
        return load_model(path)


def _builder(name: str):
    """A registry builder with no options: the shipped weights fix the configuration."""

    def builder() -> HiresModel:
        return load_shipped(name)

    builder.__name__ = name
    return builder


for _name, (_family, _task, _desc) in SHIPPED.items():
    register_model(_name, family=_family, task=_task, description=_desc, trained=True)(_builder(_name))
