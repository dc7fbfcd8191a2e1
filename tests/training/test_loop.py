"""The training loop: it learns, reports each step, stops when cancelled, and saves a loadable model file."""

import pytest
import torch

from napari_hires.engine import CancelToken
from napari_hires.errors import HiresError, OutputExistsError
from napari_hires.io.synthetic import render_labels, render_region, synthetic_slide
from napari_hires.models import create_model, load_model
from napari_hires.training import (
    TileSampler,
    TrainSettings,
    blind_spot_mask,
    fine_tune,
    segmentation_objective,
    train,
)
from napari_hires.training.sampling import Patch, to_classes

SIZE = (2048, 2048)


def _fixed_sampler(tile: int = 128) -> TileSampler:
    """A sampler that always returns the same tile: one patch exactly the tile's size."""
    image = render_region(0, 700, 700 + tile, 900, 900 + tile, size=SIZE, seed=1)
    labels = render_labels(0, 700, 700 + tile, 900, 900 + tile, size=SIZE, seed=1)
    return TileSampler([Patch(image, to_classes(labels, 4), (0, 0))], tile)


def test_training_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = create_model("hct_tiny_seg")
    steps = []
    settings = TrainSettings(steps=6, batch=2, tile=128, lr=3e-3, warmup=1, augment=False, device="cpu")
    result = train(model, _fixed_sampler(), segmentation_objective(), settings, callback=steps.append)
    assert [s.step for s in steps] == list(range(1, 7)) and not result.cancelled
    assert result.losses == [s.loss for s in steps]
    assert result.losses[-1] < 0.9 * result.losses[0]
    assert not model.training  # left ready for inference


def test_cancel_stops_between_steps_and_saves_nothing(tmp_path):
    image, truth = synthetic_slide(SIZE, seed=1)
    cancel = CancelToken()

    def stop_at_two(step):
        if step.step == 2:
            cancel.cancel()

    job = fine_tune(image, truth, "hct_tiny_seg", tmp_path / "model", regions=[(512, 768, 512, 768)],
                    settings=TrainSettings(steps=50, batch=1, tile=128, device="cpu"), callback=stop_at_two,
                    cancel=cancel)
    assert job.result.cancelled and job.result.steps_done == 2
    assert job.path is None and not list(tmp_path.iterdir())


def test_saved_file_loads_with_its_training_provenance(tmp_path):
    image, truth = synthetic_slide(SIZE, seed=1)
    settings = TrainSettings(steps=2, batch=1, tile=128, device="cpu", seed=5)
    job = fine_tune(image, truth, "hct_tiny_seg", tmp_path / "tuned", regions=[(512, 768, 512, 768)],
                    settings=settings)
    loaded = load_model(job.path)
    card = loaded.card
    assert card.architecture == "hct_tiny_seg" and card.task == "segmentation"
    assert card.provenance["base_model"] == "hct_tiny_seg"
    assert card.provenance["settings"]["steps_done"] == 2 and card.provenance["settings"]["seed"] == 5
    assert card.provenance["data"]["regions"] == [[512, 768, 512, 768]]
    assert card.provenance["data"]["labelled_pixels"] == 256 * 256
    assert card.class_names[3] == "nucleus"
    for key, value in job.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.cpu())
    with pytest.raises(OutputExistsError):
        fine_tune(image, truth, "hct_tiny_seg", tmp_path / "tuned", regions=[(0, 64, 0, 64)], settings=settings)
    with pytest.raises(HiresError, match="restoration model"):
        fine_tune(image, truth, "maxim_nano", None, regions=[(0, 64, 0, 64)], settings=settings)


def test_blind_spot_mask_hides_the_masked_pixels():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 40 * 40, dtype=torch.float32).view(2, 3, 40, 40)  # every value distinct
    masked, mask = blind_spot_mask(x, ratio=0.1, radius=2)
    assert 0.05 < mask.float().mean() < 0.15
    m = mask.expand_as(x)
    assert (masked[m] != x[m]).all()  # a masked pixel never keeps its own value
    assert torch.equal(masked[~m], x[~m])
    # its new value is a pixel of the same image and channel within the radius
    n, c, y, xx = [int(v) for v in torch.nonzero(m)[0]]
    near = x[n, c, max(0, y - 2):y + 3, max(0, xx - 2):xx + 3]
    assert (near == masked[n, c, y, xx]).any()
