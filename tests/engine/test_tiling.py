"""Tile geometry and the small numeric steps of the engine."""

import numpy as np
import torch

from napari_hires.engine.regions import argmax_labels
from napari_hires.engine.tiling import TileLayout, block_side, edge_weights, tile_starts


def test_argmax_labels_equals_argmax_including_ties():
    torch.manual_seed(0)
    out = torch.randint(0, 3, (5, 64, 80)).float()  # many ties
    np.testing.assert_array_equal(argmax_labels(out).numpy(), out.argmax(0).numpy())
    assert argmax_labels(out).dtype == torch.uint8
    assert argmax_labels(torch.rand(300, 4, 4)).dtype == torch.int32


def test_default_overlap_crops_exactly_unless_the_model_sees_beyond_its_halo():
    conv = TileLayout.for_model(512, 42, receptive_field=85)
    assert (conv.margin, conv.blend) == (42, 0)
    attention = TileLayout.for_model(512, 64, receptive_field=512)
    assert attention.margin == 64 and attention.blend == 32
    assert TileLayout.for_model(1024, 0, receptive_field=1).overlap == 0
    user = TileLayout.for_model(512, 42, overlap=128, receptive_field=85)
    assert (user.margin, user.blend) == (42, 44)
    assert TileLayout.for_model(500, 0, multiple=64).tile == 512


def test_tiles_cover_evenly_and_weights_trust_only_seen_context():
    starts = tile_starts(0, 1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(0 < b - a <= 256 - 64 for a, b in zip(starts, starts[1:]))
    w = edge_weights(100, 10, 20, taper_start=True, taper_stop=False)
    assert w[:10].max() < 1e-3 and w[30:].min() == 1 and np.all(np.diff(w[:31]) >= 0)
    assert np.all(edge_weights(100, 10, 20, taper_start=False, taper_stop=False) == 1)


def test_block_side_is_whole_chunks_and_wastes_less_than_a_fixed_choice():
    layout = TileLayout.for_model(512, 42, receptive_field=85)
    side = block_side(512, layout)
    assert side % 512 == 0

    def waste(s):
        return len(tile_starts(0, s + 2 * layout.margin, layout.tile, layout.overlap)) * layout.tile / s

    assert waste(side) <= min(waste(2048), waste(4096))
