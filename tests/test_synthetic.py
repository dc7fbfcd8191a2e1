"""The synthetic slide: deterministic, chunk-consistent, level-consistent, labelled, degradable, lazily built."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from napari_hires.errors import HiresError
from napari_hires.io.synthetic import (
    CLASS_COLORS,
    CLASS_NAMES,
    NOISE_SIGMA,
    render_labels,
    render_region,
    synthetic_slide,
)

SIZE = (16384, 12288)
PROBE_LEVEL = 6


@pytest.fixture(scope="module")
def mixed_centre() -> tuple[int, int]:
    """Level-0 (y, x) of a spot where background, stroma and epithelium all lie within ~250 px (found, not typed)."""
    lab = render_labels(PROBE_LEVEL, 0, SIZE[0] // 2**PROBE_LEVEL, 0, SIZE[1] // 2**PROBE_LEVEL, size=SIZE)
    fractions = np.stack([uniform_filter((lab == c).astype(float), size=8, mode="constant") for c in range(3)])
    score = fractions.min(axis=0)
    best = np.unravel_index(np.argmax(score), score.shape)
    assert score[best] > 0.05, "the test slide should hold mixed tissue somewhere"
    return best[0] * 2**PROBE_LEVEL, best[1] * 2**PROBE_LEVEL


def _window(centre: tuple[int, int], level: int, n: int) -> tuple[int, int, int, int]:
    """An n x n region of ``level`` centred on a level-0 point."""
    cy, cx = centre[0] // 2**level - n // 2, centre[1] // 2**level - n // 2
    return cy, cy + n, cx, cx + n


def test_same_seed_same_pixels_other_seed_other_picture(mixed_centre):
    y0, y1, x0, x1 = _window(mixed_centre, 2, 128)
    a = render_region(2, y0, y1, x0, x1, size=SIZE, seed=0)
    b = render_region(2, y0, y1, x0, x1, size=SIZE, seed=0)
    c = render_region(2, y0, y1, x0, x1, size=SIZE, seed=1)
    assert a.dtype == np.uint8 and a.shape == (128, 128, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 10
    la = render_labels(2, y0, y1, x0, x1, size=SIZE, seed=0)
    lc = render_labels(2, y0, y1, x0, x1, size=SIZE, seed=1)
    np.testing.assert_array_equal(la, render_labels(2, y0, y1, x0, x1, size=SIZE, seed=0))
    assert (la != lc).mean() > 0.1


@pytest.mark.parametrize("variant", ["clean", "noisy", "blurred"])
@pytest.mark.parametrize("level", [0, 1, 3])
def test_region_alone_equals_region_cut_from_larger_read(mixed_centre, level, variant):
    y0, y1, x0, x1 = _window(mixed_centre, level, 200)
    big = render_region(level, y0, y1, x0, x1, size=SIZE, variant=variant)
    for dy0, dy1, dx0, dx1 in [(0, 17, 0, 200), (37, 161, 100, 190), (150, 200, 3, 4), (64, 128, 64, 128)]:
        small = render_region(level, y0 + dy0, y0 + dy1, x0 + dx0, x0 + dx1, size=SIZE, variant=variant)
        np.testing.assert_array_equal(small, big[dy0:dy1, dx0:dx1])
    lab = render_labels(level, y0, y1, x0, x1, size=SIZE)
    np.testing.assert_array_equal(render_labels(level, y0 + 37, y0 + 161, x0 + 100, x0 + 190, size=SIZE),
                                  lab[37:161, 100:190])


@pytest.mark.parametrize("variant", ["clean", "blurred"])
def test_dask_chunks_agree_with_direct_render_across_chunk_borders(mixed_centre, variant):
    image, labels = synthetic_slide(SIZE, chunk=64, variant=variant)
    level = 2
    y0, y1, x0, x1 = _window(mixed_centre, level, 150)  # spans three chunks each way
    got = image.levels[level][y0:y1, x0:x1].compute()
    np.testing.assert_array_equal(got, render_region(level, y0, y1, x0, x1, size=SIZE, variant=variant))
    np.testing.assert_array_equal(labels.levels[level][y0:y1, x0:x1].compute(),
                                  render_labels(level, y0, y1, x0, x1, size=SIZE))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_level_k_looks_like_level_0_averaged(mixed_centre, level):
    f = 2**level
    n = 96
    y0, y1, x0, x1 = _window(mixed_centre, level, n)
    coarse = render_region(level, y0, y1, x0, x1, size=SIZE).astype(float)
    fine = render_region(0, y0 * f, y1 * f, x0 * f, x1 * f, size=SIZE).astype(float)
    averaged = fine.reshape(n, f, n, f, 3).mean(axis=(1, 3))
    assert np.abs(coarse - averaged).mean() < 6
    corr = np.corrcoef(coarse.ravel(), averaged.ravel())[0, 1]
    assert corr > 0.95
    assert averaged.std() > 20  # the region is not flat, so the comparison means something


def test_coarsest_level_is_rendered_directly_and_matches_its_parent():
    image, _ = synthetic_slide(SIZE)
    last = len(image.levels) - 1
    coarse = image.levels[last].compute().astype(float)
    parent = image.levels[last - 1].compute().astype(float)
    h, w = coarse.shape[:2]
    parent = np.pad(parent, ((0, 2 * h - parent.shape[0]), (0, 2 * w - parent.shape[1]), (0, 0)), mode="edge")
    averaged = parent.reshape(h, 2, w, 2, 3).mean(axis=(1, 3))
    assert np.abs(coarse - averaged).mean() < 6
    assert np.corrcoef(coarse.ravel(), averaged.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("level", [1, 2, 3])
def test_label_levels_are_level_0_sampled_nearest(mixed_centre, level):
    f = 2**level
    y0, y1, x0, x1 = _window(mixed_centre, level, 64)
    direct = render_labels(level, y0, y1, x0, x1, size=SIZE)
    full = render_labels(0, y0 * f, y1 * f, x0 * f, x1 * f, size=SIZE)
    np.testing.assert_array_equal(direct, full[::f, ::f])


def test_labels_agree_with_the_image(mixed_centre):
    y0, y1, x0, x1 = _window(mixed_centre, 0, 384)
    img = render_region(0, y0, y1, x0, x1, size=SIZE).astype(float)
    lab = render_labels(0, y0, y1, x0, x1, size=SIZE)
    present = [c for c in CLASS_NAMES if (lab == c).sum() > 100]
    assert len(present) >= 3
    means = {c: img[lab == c].mean(axis=0) for c in present}
    gray = {c: m.mean() for c, m in means.items()}
    if 0 in gray:
        assert gray[0] > 220  # background is near white
    if 3 in gray:
        assert gray[3] < 130  # nuclei are dark
        assert all(gray[3] < gray[c] - 40 for c in present if c != 3)
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            assert np.linalg.norm(means[a] - means[b]) > 20, (CLASS_NAMES[a], CLASS_NAMES[b])


def test_noisy_variant_adds_noise_of_the_stated_sigma(mixed_centre):
    for level, sigma in [(0, NOISE_SIGMA), (1, NOISE_SIGMA / 2)]:
        y0, y1, x0, x1 = _window(mixed_centre, level, 256)
        clean = render_region(level, y0, y1, x0, x1, size=SIZE).astype(float)
        noisy = render_region(level, y0, y1, x0, x1, size=SIZE, variant="noisy").astype(float)
        unclipped = (clean > 4 * sigma) & (clean < 255 - 4 * sigma)
        assert unclipped.sum() > 5000  # enough tissue samples away from 0 and 255
        diff = (noisy - clean)[unclipped]
        assert abs(diff.mean()) < 1.0
        assert diff.std() == pytest.approx(sigma, rel=0.1)


def test_blurred_variant_is_smoother_but_the_same_picture(mixed_centre):
    y0, y1, x0, x1 = _window(mixed_centre, 0, 256)
    clean = render_region(0, y0, y1, x0, x1, size=SIZE).astype(float)
    blurred = render_region(0, y0, y1, x0, x1, size=SIZE, variant="blurred").astype(float)

    def gradient_energy(a: np.ndarray) -> float:
        return float((np.diff(a, axis=0) ** 2).mean() + (np.diff(a, axis=1) ** 2).mean())

    assert gradient_energy(blurred) < 0.5 * gradient_energy(clean)
    assert abs(blurred.mean() - clean.mean()) < 2
    assert np.corrcoef(clean.ravel(), blurred.ravel())[0, 1] > 0.8


def test_pyramid_contract():
    start = time.perf_counter()
    image, labels = synthetic_slide()
    built = time.perf_counter() - start
    assert built < 2.0, f"building the default pyramid took {built:.2f} s; the graph must stay lazy"
    assert image.shape == (131072, 131072, 3)
    assert len(image.levels) == 9

    image, labels = synthetic_slide((100000, 100000), chunk=256)
    assert len(image.levels) >= 8 and len(image.levels) == len(labels.levels)
    assert max(image.level_yx_shape(len(image.levels) - 1)) < 1024
    assert max(image.level_yx_shape(len(image.levels) - 1)) <= 512
    assert max(image.level_yx_shape(len(image.levels) - 2)) > 512
    for k, (im, lab) in enumerate(zip(image.levels, labels.levels)):
        expected = (-(-100000 // 2**k), -(-100000 // 2**k))
        assert im.shape == (*expected, 3) and lab.shape == expected
        assert im.dtype == np.uint8 and lab.dtype == np.uint8
        assert im.chunksize == (min(256, expected[0]), min(256, expected[1]), 3)
        assert lab.chunksize == (min(256, expected[0]), min(256, expected[1]))
    assert image.axes == "yxc" and labels.axes == "yx"
    assert image.scale == (1.0, 1.0, 1.0) and labels.scale == (1.0, 1.0)
    assert image.rgb and image.kind == "image" and labels.kind == "labels"
    assert image.name == "synthetic slide" and labels.name == "ground truth"
    assert image.source is None and labels.source is None
    assert labels.class_names == CLASS_NAMES and labels.class_colors == CLASS_COLORS
    assert {0, 1, 2, 3} <= set(CLASS_NAMES) and CLASS_COLORS[0][3] == 0

    chunk = image.levels[0][50000:50256, 50000:50256].compute()
    assert chunk.shape == (256, 256, 3)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"size": (0, 100)}, "positive"),
        ({"size": "big"}, "two integers"),
        ({"variant": "sharp"}, "variant"),
        ({"chunk": 0}, "chunk"),
        ({"min_size": 0}, "min_size"),
    ],
)
def test_bad_arguments_give_clear_errors(kwargs, words):
    args = {"size": (1024, 1024), **kwargs}
    with pytest.raises(HiresError, match=words):
        synthetic_slide(args.pop("size"), **args)


def test_bad_region_gives_clear_error():
    with pytest.raises(HiresError, match="empty region"):
        render_region(0, 10, 5, 0, 4, size=(100, 100))
    with pytest.raises(HiresError, match="level"):
        render_labels(-1, 0, 5, 0, 4, size=(100, 100))


def test_sample_data_opens_in_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-hires", "synthetic_slide")
    image = next(layer for layer in viewer.layers if layer.__class__.__name__ == "Image")
    labels = next(layer for layer in viewer.layers if layer.__class__.__name__ == "Labels")
    assert image.multiscale and image.rgb
    assert image.data[0].shape == (131072, 131072, 3)
    assert labels.multiscale
    assert labels.data[0].shape == (131072, 131072)
    assert len(labels.data) == len(image.data) == 9
    assert labels.visible is False
