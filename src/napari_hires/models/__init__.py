"""HCT, MaxViT, MAXIM and xT in plain PyTorch, with task heads, a registry of named configurations and model files."""

from napari_hires.models.base import Backbone, HiresModel, count_parameters, pad_to_multiple
from napari_hires.models.card import ModelCard, Normalization
from napari_hires.models.files import load_model, save_model
from napari_hires.models.registry import create_model, list_models, model_entry, register_model, register_weights

__all__ = [
    "Backbone",
    "HiresModel",
    "ModelCard",
    "Normalization",
    "count_parameters",
    "create_model",
    "list_models",
    "load_model",
    "model_entry",
    "pad_to_multiple",
    "register_model",
    "register_weights",
    "save_model",
]
