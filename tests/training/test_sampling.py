"""Training tiles: label conventions, regions, tiles around labelled pixels, and aligned augmentation."""

import numpy as np
import pytest

from napari_hires.errors import HiresError
from napari_hires.io.synthetic import synthetic_slide
from napari_hires.training import IGNORE_INDEX, TileSampler, augment, read_patches, to_classes
from napari_hires.training.sampling import PairedTileSampler, Patch


def test_ignore_index_and_scribble_conventions():
    raw = np.array([[0, 1, 2, 255]], np.uint8)
    assert to_classes(raw, 3).tolist() == [[0, 1, 2, IGNORE_INDEX]]
    scribble = np.array([[0, 1, 3, 0]], np.uint16)
    assert to_classes(scribble, 3, zero_is_unlabelled=True).tolist() == [[IGNORE_INDEX, 0, 2, IGNORE_INDEX]]
    with pytest.raises(HiresError, match="value 3"):
        to_classes(np.array([[3]]), 3)
    with pytest.raises(HiresError, match="integer"):
        to_classes(np.zeros((2, 2), np.float32), 3)


def test_tiles_come_from_labelled_pixels_only():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)
    labels = np.full((300, 300), IGNORE_INDEX, np.uint8)
    labels[200:205, 40:45] = 2  # one small scribble
    sampler = TileSampler([Patch(image, labels, (0, 0))], 64)
    tiles, classes = sampler.sample(16, rng)
    assert tiles.shape == (16, 64, 64, 3) and classes.shape == (16, 64, 64)
    assert all((c == 2).any() for c in classes)  # every tile holds labelled pixels
    assert set(np.unique(classes)) == {2, IGNORE_INDEX}
    # the pixels under a labelled pixel are the image's own pixels there
    k = int(np.argmax([(c == 2).sum() for c in classes]))
    ys, xs = np.nonzero(classes[k] == 2)
    match = [(y0, x0) for y0 in range(0, 237) for x0 in range(0, 237)
             if np.array_equal(image[y0:y0 + 64, x0:x0 + 64], tiles[k])]
    assert len(match) == 1 and (labels[match[0][0] + ys, match[0][1] + xs] == 2).all()


def test_regions_read_from_a_pyramid_level(tmp_path):
    image, truth = synthetic_slide((1024, 1024), seed=3, chunk=256)
    patches = read_patches(image, truth, level=1, regions=[(0, 256, 512, 1024)], num_classes=4)
    assert len(patches) == 1 and patches[0].image.shape == (128, 256, 3) and patches[0].origin == (0, 256)
    np.testing.assert_array_equal(patches[0].labels, np.asarray(truth.levels[1][0:128, 256:512]))
    with pytest.raises(HiresError, match="outside the image"):
        read_patches(image, truth, regions=[(0, 2048, 0, 10)])
    blank = np.full((1024, 1024), IGNORE_INDEX, np.uint8)
    with pytest.raises(HiresError, match="no labelled pixels"):
        read_patches(image, blank, regions=[(0, 64, 0, 64)])


def test_small_patches_are_padded_as_unlabelled():
    image = np.full((20, 30, 3), 7, np.uint8)
    sampler = TileSampler([Patch(image, np.ones((20, 30), np.uint8), (0, 0))], 32)
    tiles, classes = sampler.sample(2, np.random.default_rng(1))
    assert tiles.shape == (2, 32, 32, 3)
    assert (classes[:, 20:] == IGNORE_INDEX).all() and (classes[:, :20, :30] == 1).all()


def test_augmentation_keeps_pixels_and_labels_aligned():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, (6, 32, 32)).astype(np.uint8)
    palette = np.array([[10, 20, 30], [200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8)
    images = palette[labels]  # each class has its own colour
    out_images, out_labels = augment(images, labels, rng, intensity=False)
    np.testing.assert_array_equal(out_images, palette[out_labels])
    assert any(not np.array_equal(a, b) for a, b in zip(out_labels, labels))  # something moved
    jittered, jl = augment(images, labels, rng, intensity=True)
    assert not np.array_equal(jittered, palette[jl])  # colours changed...
    for tile, classes in zip(jittered, jl):  # ...but each class keeps one colour per tile, where its labels are
        for k in np.unique(classes):
            assert len(np.unique(tile[classes == k], axis=0)) == 1


def test_paired_sampler_and_augmentation_keep_pairs():
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 200, (96, 96, 3), dtype=np.uint8)
    noisy = clean + 5
    sampler = PairedTileSampler([Patch(noisy, None, (0, 0))], [Patch(clean, None, (0, 0))], 32)
    a, b = augment(*sampler.sample(4, rng), rng, intensity=False)
    np.testing.assert_array_equal(a, b + 5)
