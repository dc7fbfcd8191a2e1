"""A real stained tile with labels derived from its own colours: skimage's immunohistochemistry image (512 x 512
RGB, haematoxylin and DAB) and its classes by colour deconvolution, as a user's "corrections" on its left half."""

from __future__ import annotations

import numpy as np

IGNORE = 255


def ihc_labels(image: np.ndarray) -> np.ndarray:
    """Classes of the shipped segmenters from colour alone: 0 background (bright), 1 stroma (the rest), 2 DAB-positive
    tissue, 3 nuclei (strong haematoxylin), thresholds by Otsu's method."""
    from skimage.color import rgb2gray, rgb2hed
    from skimage.filters import threshold_otsu

    hed, grey = rgb2hed(image), rgb2gray(image)
    labels = np.ones(image.shape[:2], np.uint8)
    labels[grey > threshold_otsu(grey) + 0.1] = 0
    dab = hed[..., 2] > threshold_otsu(hed[..., 2])
    labels[dab & (labels != 0)] = 2
    labels[hed[..., 0] > threshold_otsu(hed[..., 0])] = 3
    return labels


def ihc_tile() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, every pixel's derived class, the corrections: the left half's classes, the right half unlabelled)."""
    from skimage.data import immunohistochemistry

    image = immunohistochemistry()
    truth = ihc_labels(image)
    corrections = truth.copy()
    corrections[:, image.shape[1] // 2:] = IGNORE
    return image, truth, corrections
