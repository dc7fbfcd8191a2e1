"""Training without Qt: fine-tuning from corrected labels and self-supervised (blind-spot) restoration.

Labels for training are classes ``0 .. K-1`` with ``IGNORE_INDEX`` (255) for unlabelled pixels; a scribble layer
where 0 means "no label" is read with ``zero_is_unlabelled=True`` (label ``v`` is class ``v - 1``). Only labelled
pixels count, so a corrected window or a few strokes are enough to fine-tune.
"""

from napari_hires.training.augment import augment
from napari_hires.training.evaluate import (
    dice_per_class,
    evaluate_restoration,
    evaluate_segmentation,
    mean_dice,
    predict_box,
    psnr,
)
from napari_hires.training.loop import StepInfo, TrainResult, TrainSettings, train, training_steps
from napari_hires.training.losses import restoration_objective, segmentation_objective
from napari_hires.training.sampling import IGNORE_INDEX, Patch, TileSampler, read_patches, to_classes
from napari_hires.training.selfsupervised import blind_spot_mask, blind_spot_objective
from napari_hires.training.trainer import (
    TrainingJob,
    fine_tune,
    fine_tune_steps,
    save_trained,
    self_supervised_steps,
    train_self_supervised,
    trained_card,
)

__all__ = [
    "IGNORE_INDEX",
    "Patch",
    "StepInfo",
    "TileSampler",
    "TrainResult",
    "TrainSettings",
    "TrainingJob",
    "augment",
    "blind_spot_mask",
    "blind_spot_objective",
    "dice_per_class",
    "evaluate_restoration",
    "evaluate_segmentation",
    "fine_tune",
    "fine_tune_steps",
    "mean_dice",
    "predict_box",
    "psnr",
    "read_patches",
    "restoration_objective",
    "save_trained",
    "segmentation_objective",
    "self_supervised_steps",
    "to_classes",
    "train",
    "train_self_supervised",
    "trained_card",
    "training_steps",
]
