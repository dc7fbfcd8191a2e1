"""The engine on a real CUDA device: the same results as on the CPU, pinned transfers, channels-last, half-precision
autocast and batch halving on out-of-memory. Skipped where torch has no CUDA device (CI); run by
benchmarks/gpu_check.sh on a GPU machine (``pytest -m cuda``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from conftest import ConvNet

from napari_hires.engine import Box, TileLayout, TileRunner, predict
from napari_hires.io.synthetic import DEFAULT_SIZE, render_region
from napari_hires.models import create_model
from napari_hires.models.base import HiresModel

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

#: Largest probability difference from the CPU's float32: cuDNN's TF32 convolutions (torch's default) for fp32,
#: 8 and 11 mantissa bits for bf16 and fp16 (the CPU's own autocast gives 3e-4 and 4e-5 on this model and image).
TOLERANCE = {"fp32": 2e-3, "bf16": 2e-2, "fp16": 5e-3}


def _blended(model: HiresModel, image: np.ndarray, device: str, precision: str) -> torch.Tensor:
    """Blended probabilities of ``model`` over the whole of ``image``, in 128-px tiles, back on the CPU."""
    runner = TileRunner(model, device=device, precision=precision, batch=3)
    bounds = Box(0, image.shape[0], 0, image.shape[1])
    out, _ = runner.predict_region(image, bounds, bounds, TileLayout.for_model(128, model.halo, None, 1))
    return out.cpu()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_probabilities_match_the_cpu_within_the_precision_tolerance(conv_model, rgb_image, precision):
    cpu = _blended(conv_model, rgb_image, "cpu", "fp32")
    cuda = _blended(conv_model, rgb_image, "cuda", precision)
    assert (cuda - cpu).abs().max().item() < TOLERANCE[precision]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_autocast_runs_the_model_in_that_dtype(conv_model, precision):
    runner = TileRunner(conv_model, device="cuda", precision=precision)
    seen: list[torch.dtype] = []
    hook = runner.model.body[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        runner.run_batch(np.zeros((2, 64, 64, 3), dtype=np.uint8))
    finally:
        hook.remove()
    assert seen == [{"bf16": torch.bfloat16, "fp16": torch.float16}[precision]]


def test_cuda_inputs_match_the_cpu_after_the_pinned_non_blocking_copy():
    rng = np.random.default_rng(0)
    tiles = {np.uint8: rng.integers(0, 256, (4, 96, 80, 3), dtype=np.uint8),
             np.uint16: rng.integers(0, 65536, (4, 96, 80, 3), dtype=np.uint16),
             np.float32: rng.random((4, 96, 80, 3), dtype=np.float32)}
    tiles[np.float32][0, 5, 7] = np.nan
    model = ConvNet()
    for dtype, t in tiles.items():
        cpu = TileRunner(model, device="cpu").to_input(t)
        cuda = TileRunner(model, device="cuda").to_input(t)
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-6, atol=1e-6, msg=f"{np.dtype(dtype)} tiles")


def test_cuda_inputs_travel_through_pinned_host_memory():
    stats = getattr(torch.cuda, "host_memory_stats", None)
    if stats is None:
        pytest.skip("this torch does not report its pinned host memory")

    counters = ("num_host_alloc", "allocations.allocated")  # blocks the pinned pool has made (names vary by torch)
    if not set(counters) & set(stats()):
        pytest.skip(f"this torch names its pinned-memory counters otherwise: {', '.join(sorted(stats())[:12])}")

    def pinned_blocks() -> int:
        return sum(v for k, v in stats().items() if k in counters)

    runner = TileRunner(ConvNet(), device="cuda")
    before = pinned_blocks()
    runner.to_input(np.zeros((3, 1000, 1000, 3), dtype=np.uint8))  # 9 MB: a size no other test pins
    assert pinned_blocks() > before


def test_cuda_model_and_inputs_are_channels_last():
    runner = TileRunner(ConvNet(), device="cuda")
    x = runner.to_input(np.zeros((2, 64, 64, 3), dtype=np.uint8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert runner.model.body[0].weight.is_contiguous(memory_format=torch.channels_last)


class Greedy(ConvNet):
    """A ConvNet whose forward on CUDA also takes ``share`` of the device's free memory per tile in the batch: two
    tiles or more run out of memory on any GPU, one fits."""

    def __init__(self, share: float = 0.6) -> None:
        super().__init__()
        free, _ = torch.cuda.mem_get_info()
        self.per_tile = int(free * share)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            scratch = torch.empty(x.shape[0] * self.per_tile, dtype=torch.uint8, device=x.device)
            del scratch
        return super().forward_padded(x)


def test_out_of_memory_on_the_device_halves_the_batch_until_it_fits(rgb_image):
    torch.manual_seed(0)
    model = Greedy().eval()
    runner = TileRunner(model, device="cuda", precision="fp32", batch=4)
    tiles = np.stack([rgb_image[:64, i * 64:(i + 1) * 64] for i in range(4)])
    try:
        out = runner.run_batch(tiles)
    finally:
        torch.cuda.empty_cache()
    assert runner.batch == 1
    expected = TileRunner(model, device="cpu", precision="fp32").run_batch(tiles)
    assert (out.cpu() - expected).abs().max().item() < TOLERANCE["fp32"]


@pytest.mark.parametrize(("precision", "share"), [("fp32", 0.005), ("auto", 0.02)])
def test_predict_on_cuda_gives_the_cpu_labels(tmp_path, precision, share):
    """A trained model on a patch of the synthetic slide with all four classes: at most ``share`` of the pixels
    change class (near-ties; the CPU's own bf16 autocast changes 0.3 %)."""
    image = render_region(0, 20480, 20864, 12288, 12800, size=DEFAULT_SIZE, seed=0)
    model = create_model("hct_tiny_seg_synthetic")
    labels = {}
    for device in ("cpu", "cuda"):
        predict(image, model, tmp_path / f"{device}.zarr", device=device,
                precision="fp32" if device == "cpu" else precision)
        labels[device] = zarr.open_group(tmp_path / f"{device}.zarr", mode="r")["0"][:]
    assert np.bincount(labels["cpu"].ravel(), minlength=4).min() > 0.02 * labels["cpu"].size
    assert (labels["cuda"] != labels["cpu"]).mean() < share
