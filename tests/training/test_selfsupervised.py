"""Self-supervised (blind-spot) training denoises a noisy image without ever seeing a clean one."""

from napari_hires.io.synthetic import render_region
from napari_hires.training import TrainSettings, psnr, predict_box, train_self_supervised

SIZE = (4096, 4096)
BOX = (1024, 1280, 1024, 1280)


def test_blind_spot_training_raises_psnr_by_3db():
    noisy = render_region(0, *BOX, size=SIZE, seed=2, variant="noisy")
    clean = render_region(0, *BOX, size=SIZE, seed=2)  # only to measure; training never sees it
    # every pixel trains (holdout 0): this measures what blind-spot training learns in 150 steps of a 256-px region;
    # holding a fifth out for a score costs about 0.1 dB here (tests/training/test_held_out.py checks the score)
    settings = TrainSettings(steps=150, batch=8, tile=64, lr=3e-3, device="cpu", holdout=0)
    job = train_self_supervised(noisy, settings=settings, mask_ratio=0.05)
    restored = predict_box(job.model, noisy, (0, 256, 0, 256), device="cpu")
    gain = psnr(restored, clean) - psnr(noisy, clean)
    assert gain >= 3.0, gain
