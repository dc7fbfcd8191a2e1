"""The training loop: AdamW with warm-up and a cosine schedule, mixed precision on CUDA, loss per step, cancel.

Inputs are normalised exactly as the engine normalises them at inference (:meth:`TileRunner.to_input`, with the
model card's normalisation and the image's own input range), so a trained model predicts on the same numbers it
learnt from, whatever the image's bit depth.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Generator

import numpy as np
import torch

from napari_hires.engine.device import autocast
from napari_hires.engine.events import drain
from napari_hires.engine.runner import CancelToken, TileRunner
from napari_hires.errors import HiresError
from napari_hires.models.base import HiresModel
from napari_hires.training.augment import augment
from napari_hires.training.losses import Objective
from napari_hires.training.sampling import TileSampler


@dataclass(frozen=True)
class TrainSettings:
    """How long and how to train; all of it goes into the model card's provenance. The one source of the training
    defaults, for the API, ``napari-hires train`` (flags left out keep these) and the Fine-tune widget's form."""

    steps: int = 200
    batch: int = 8
    tile: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 10  # steps of linear warm-up before the cosine decay
    augment: bool = True
    intensity: bool = True  # colour jitter as part of the augmentation
    device: str = "auto"
    precision: str = "auto"  # bf16/fp16 autocast on CUDA, float32 on the CPU
    seed: int = 0
    clip: float = 1.0  # gradient norm clip
    bn_batches: int = 20  # batches that re-estimate BatchNorm statistics after training (0: keep the running ones)
    encoder_lr: float = 0.1  # a pretrained encoder (create_model(..., encoder=...)) trains at this times lr

    def check(self) -> None:
        """A clear error for settings that cannot train."""
        if self.steps < 1 or self.batch < 1:
            raise HiresError(f"training needs steps and batch of at least 1, got {self.steps} and {self.batch}")
        if not self.lr > 0:
            raise HiresError(f"the learning rate must be positive, got {self.lr}")
        if not self.encoder_lr > 0:
            raise HiresError(f"encoder_lr (the encoder's share of the learning rate) must be positive, got "
                             f"{self.encoder_lr}")


@dataclass(frozen=True)
class StepInfo:
    """What the callback hears after each step."""

    step: int  # 1-based
    steps: int
    loss: float
    lr: float
    seconds: float  # since training started


@dataclass
class TrainResult:
    """What a run did: the losses per step, how long it took, on which device, and whether it was cancelled."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    cancelled: bool = False

    @property
    def steps_done(self) -> int:
        return len(self.losses)


def _schedule(settings: TrainSettings) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up, then cosine down to 2 % of the peak."""
    warm = max(1, min(settings.warmup, settings.steps // 4))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, settings.steps - warm)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _target(runner: TileRunner, targets: np.ndarray | None, sampler: TileSampler) -> torch.Tensor | None:
    """Targets on the device: classes as int64, clean images normalised like inputs."""
    if targets is None:
        return None
    if targets.ndim == 4:
        return runner.to_input(targets, sampler.input_range)
    return torch.from_numpy(targets.astype(np.int64)).to(runner.device)


def train(
    model: HiresModel,
    sampler: TileSampler,
    objective: Objective,
    settings: TrainSettings,
    *,
    callback: Callable[[StepInfo], None] | None = None,
    cancel: CancelToken | None = None,
) -> TrainResult:
    """Train ``model`` in place on tiles from ``sampler``; stops early (``cancelled``) when ``cancel`` is set;
    ``callback`` hears each step. Drains :func:`training_steps`."""
    return drain(training_steps(model, sampler, objective, settings, cancel=cancel), callback)


def training_steps(
    model: HiresModel,
    sampler: TileSampler,
    objective: Objective,
    settings: TrainSettings,
    *,
    cancel: CancelToken | None = None,
) -> Generator[StepInfo, None, TrainResult]:
    """Training as a generator: yields a :class:`StepInfo` after each step, returns the :class:`TrainResult`.

    Deterministic on the CPU for a given ``settings.seed``. The model is left in eval mode on the training device.
    """
    settings.check()
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    runner = TileRunner(model, device=settings.device, precision=settings.precision, batch=settings.batch)
    scaler = torch.amp.GradScaler(runner.device.type, enabled=runner.amp_dtype == torch.float16)
    opt = torch.optim.AdamW(parameter_groups(model, settings), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(settings))
    result = TrainResult(device=str(runner.device))
    t0 = time.perf_counter()
    model.train()
    try:
        for step in range(settings.steps):
            if cancel is not None and cancel.cancelled:
                result.cancelled = True
                break
            images, targets = sampler.sample(settings.batch, rng)
            if settings.augment:
                images, targets = augment(images, targets, rng, intensity=settings.intensity)
            x = runner.to_input(images, sampler.input_range)
            with autocast(runner.device, runner.amp_dtype):
                loss = objective(model, x, _target(runner, targets, sampler))
            if not torch.isfinite(loss):
                raise HiresError(f"training diverged at step {step + 1} (loss {loss.item()}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip)
            scaler.step(opt)
            scaler.update()
            lr = opt.param_groups[0]["lr"]
            sched.step()
            result.losses.append(float(loss.detach()))
            yield StepInfo(step + 1, settings.steps, result.losses[-1], lr, time.perf_counter() - t0)
        if not result.cancelled and settings.bn_batches:
            recalibrate_batchnorm(model, runner, sampler, settings.bn_batches, settings.batch, rng)
    finally:
        model.eval()
        if result.losses:  # its weights are no longer those of a tag, nor a random initialisation
            model.tag, model.trained = None, True
        result.seconds = time.perf_counter() - t0
    return result


def recalibrate_batchnorm(model: HiresModel, runner: TileRunner, sampler: TileSampler, batches: int, batch: int,
                          rng: np.random.Generator) -> None:
    """Re-estimate BatchNorm running statistics as plain averages over ``batches`` batches of training tiles.

    Slow running averages (momentum 0.01 in MaxViT) still remember their initial values after a short training,
    so inference would normalise with statistics the weights never met; a few forward passes fix that.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    try:
        with torch.no_grad(), autocast(runner.device, runner.amp_dtype):
            for _ in range(batches):
                model(runner.to_input(sampler.sample(batch, rng)[0], sampler.input_range))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def parameter_groups(model: HiresModel, settings: TrainSettings) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: one, or, for a model whose backbone is a pretrained encoder that has not been
    trained with its head yet, the head at ``lr`` and the encoder at ``encoder_lr * lr`` (so the new head's large
    early gradients do not wash out what the encoder learnt)."""
    if not model.encoder or model.trained:
        return [{"params": list(model.parameters())}]
    encoder = list(model.backbone.parameters())
    inside = {id(p) for p in encoder}
    head = [p for p in model.parameters() if id(p) not in inside]
    return [{"params": head}, {"params": encoder, "lr": settings.lr * settings.encoder_lr}]


def settings_record(settings: TrainSettings, result: TrainResult) -> dict:
    """The settings and outcome of a run as JSON-able provenance."""
    return {**asdict(settings), "steps_done": result.steps_done, "seconds": round(result.seconds, 1),
            "device": result.device, "final_loss": round(float(np.mean(result.losses[-10:])), 5)
            if result.losses else None}
