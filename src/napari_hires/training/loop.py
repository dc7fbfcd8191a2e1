"""The training loop: AdamW with warm-up and a cosine schedule, mixed precision on CUDA, loss per step, cancel.

Given a held-out scorer (:mod:`napari_hires.training.evaluate`), the loop scores the model before training (step
0), every ``eval_every`` steps and at the end, keeps the state with the best score, stops once ``patience``
evaluations in a row bring no gain, and ends with the best state, or with the model as it was when training never
beat it.

Inputs are normalised exactly as the engine normalises them at inference (:meth:`TileRunner.to_input`, with the
model card's normalisation and the image's own input range), so a trained model predicts on the same numbers it
learnt from, whatever the image's bit depth.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, Protocol

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

if TYPE_CHECKING:
    from napari_hires.training.evaluate import Score


@dataclass(frozen=True)
class TrainSettings:
    """How long and how to train; all of it goes into the model card's provenance. The one source of the training
    defaults, for the API, ``napari-hires train`` (flags left out keep these) and the Fine-tune widget's form.

    ``steps`` (1000) is a budget: a fifth of the labelled pixels (``holdout``, by region) is held out and scored
    before training, every ``eval_every`` (25) steps and at the end; training stops once ``patience`` (6)
    evaluations in a row have not beaten the best score of the run, and the best state is what is kept (the model as
    it was, if training never beat its score before training). ``holdout=0`` trains on every label for ``steps``
    steps with no score; ``patience=0`` never stops early.
    """

    steps: int = 1000
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
    holdout: float = 0.2  # share of the labelled pixels held out, by region, to score on (0: none)
    eval_every: int = 25  # steps between held-out evaluations
    patience: int = 6  # evaluations without a gain before training stops (0: never stop early)

    def check(self) -> None:
        """A clear error for settings that cannot train."""
        if self.steps < 1 or self.batch < 1:
            raise HiresError(f"training needs steps and batch of at least 1, got {self.steps} and {self.batch}")
        if not self.lr > 0:
            raise HiresError(f"the learning rate must be positive, got {self.lr}")
        if not self.encoder_lr > 0:
            raise HiresError(f"encoder_lr (the encoder's share of the learning rate) must be positive, got "
                             f"{self.encoder_lr}")
        if not 0 <= self.holdout < 0.5 or self.eval_every < 1 or self.patience < 0:
            raise HiresError(f"holdout must lie in [0, 0.5), eval_every be at least 1 and patience at least 0; got "
                             f"{self.holdout}, {self.eval_every} and {self.patience}")


class HeldOutScorer(Protocol):
    """Scores a model on held-out data: higher is better; changes within ``tolerance`` are no change."""

    metric: str
    tolerance: float
    definition: str

    def __call__(self, model: HiresModel) -> "Score": ...


@dataclass(frozen=True)
class HeldOutScore:
    """The held-out score so far: before training, at the latest evaluation (``step``) and the best, with its step."""

    metric: str
    before: float
    step: int
    score: float
    best: float
    best_step: int
    per_class: dict[int, float] = field(default_factory=dict)  # at ``step`` (segmentation)
    best_per_class: dict[int, float] = field(default_factory=dict)  # at ``best_step``

    @property
    def name(self) -> str:
        """The metric without its unit: "Dice", "blind-spot PSNR"."""
        return self.metric.replace(" dB", "")

    def text(self, value: float) -> str:
        """A score as it is shown: Dice to 3 decimals, dB to 2."""
        return f"{value:.2f} dB" if self.metric.endswith("dB") else f"{value:.3f}"


@dataclass(frozen=True)
class StepInfo:
    """What the callback hears after each step."""

    step: int  # 1-based
    steps: int
    loss: float
    lr: float
    seconds: float  # since training started
    held_out: HeldOutScore | None = None  # as of this step (None: nothing held out); step 1's holds the score before

    @property
    def evaluated(self) -> bool:
        """Whether the held-out score was measured after this step."""
        return self.held_out is not None and self.held_out.step == self.step


@dataclass
class TrainResult:
    """What a run did: the losses per step, how long it took, on which device, whether it was cancelled or stopped
    early, and the held-out scores by step (step 0: before training) with the one that was kept."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    device: str = "cpu"
    cancelled: bool = False
    stopped_early: bool = False
    held_out: HeldOutScore | None = None  # the last evaluation
    scores: dict[int, float] = field(default_factory=dict)
    kept_step: int | None = None  # the step whose state the model ends with (0: the model as it was)

    @property
    def steps_done(self) -> int:
        return len(self.losses)

    @property
    def improved(self) -> bool:
        """Whether training beat the held-out score before training (True when nothing was held out)."""
        return self.kept_step != 0


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


class _Tracker:
    """The held-out scores of one run: the state with the best score (in memory), and when to stop."""

    def __init__(self, scorer: HeldOutScorer, model: HiresModel, patience: int) -> None:
        self.scorer, self.patience = scorer, patience
        self.base = (model.tag, model.trained)
        score = scorer(model)
        self.scores = {0: score.value}
        self.latest = HeldOutScore(scorer.metric, score.value, 0, score.value, score.value, 0, score.per_class,
                                   score.per_class)
        self.initial, self.best_state = _snapshot(model), None
        self.run_best, self.since = -math.inf, 0  # the best score during training, evaluations since a gain

    def evaluate(self, model: HiresModel, step: int) -> None:
        score = self.scorer(model)
        self.scores[step] = score.value
        if score.value > self.run_best + self.scorer.tolerance:
            self.since = 0
        else:
            self.since += 1
        self.run_best = max(self.run_best, score.value)
        last = self.latest
        best, best_step, best_per_class = last.best, last.best_step, last.best_per_class
        if score.value > best:
            best, best_step, best_per_class, self.best_state = score.value, step, score.per_class, _snapshot(model)
        self.latest = HeldOutScore(self.scorer.metric, last.before, step, score.value, best, best_step,
                                   score.per_class, best_per_class)

    @property
    def stalled(self) -> bool:
        return self.patience > 0 and self.since >= self.patience

    def keep_best(self, model: HiresModel) -> int:
        """Load the best state into ``model``, or the state it had, when training did not beat it by more than the
        tolerance; returns the step kept."""
        latest = self.latest
        step = latest.best_step if latest.best > latest.before + self.scorer.tolerance else 0
        if step != latest.step:
            model.load_state_dict(self.best_state if step else self.initial)
        if step == 0:
            model.tag, model.trained = self.base
        return step


def _snapshot(model: HiresModel) -> dict[str, torch.Tensor]:
    """A copy of the model's weights and buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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
    held_out: HeldOutScorer | None = None,
) -> Generator[StepInfo, None, TrainResult]:
    """Training as a generator: yields a :class:`StepInfo` after each step, returns the :class:`TrainResult`.

    With ``held_out``, the model is scored before training, every ``settings.eval_every`` steps (BatchNorm
    statistics re-estimated first, as for the end) and after the last step; it stops after ``settings.patience``
    evaluations without a gain and ends with the best state (see the module docstring). Deterministic on the CPU
    for a given ``settings.seed``. The model is left in eval mode on the training device.
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
    tracker = None if held_out is None else _Tracker(held_out, model, settings.patience)
    bn_rng = np.random.default_rng(settings.seed + 1)  # statistics for evaluations: the training tiles stay as they are
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
            done = step + 1
            if tracker is not None and (done % settings.eval_every == 0 or done == settings.steps):
                if settings.bn_batches:
                    recalibrate_batchnorm(model, runner, sampler, settings.bn_batches, settings.batch, bn_rng)
                tracker.evaluate(model, done)
                model.train()
            yield StepInfo(done, settings.steps, result.losses[-1], lr, time.perf_counter() - t0,
                           None if tracker is None else tracker.latest)
            if tracker is not None and tracker.stalled and done < settings.steps:
                result.stopped_early = True
                break
        if not result.cancelled and tracker is None and settings.bn_batches:
            recalibrate_batchnorm(model, runner, sampler, settings.bn_batches, settings.batch, rng)
    finally:
        model.eval()
        if result.losses:  # its weights are no longer those of a tag, nor a random initialisation
            model.tag, model.trained = None, True
        result.seconds = time.perf_counter() - t0
    if tracker is not None:
        result.held_out, result.scores = tracker.latest, tracker.scores
        if not result.cancelled:
            result.kept_step = tracker.keep_best(model)
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
            "device": result.device, "stopped_early": result.stopped_early,
            "final_loss": round(float(np.mean(result.losses[-10:])), 5) if result.losses else None}


def held_out_progress(score: HeldOutScore) -> str:
    """The held-out score during training, e.g. "held-out Dice 0.791 at step 50 (before 0.770, best 0.802 at step
    25)"."""
    if score.step == 0:
        return f"held-out {score.name} {score.text(score.before)} before training"
    return (f"held-out {score.name} {score.text(score.score)} at step {score.step} (before "
            f"{score.text(score.before)}, best {score.text(score.best)} at step {score.best_step})")


def held_out_summary(result: TrainResult) -> str:
    """How the held-out score went, in words: before, best (and its step), last, what was kept; "" when none."""
    score = result.held_out
    if score is None:
        return ""
    if result.cancelled:
        return f"held-out {score.name} {score.text(score.before)} before training"
    if not result.improved:
        during = [v for step, v in result.scores.items() if step > 0]
        reached = f" -> {score.text(max(during))} at best" if during else ""
        return (f"training did not improve the held-out score ({score.name} {score.text(score.before)}{reached}); "
                "the model was kept as it was")
    stopped = " (stopped early: no gain in the evaluations since)" if result.stopped_early else ""
    return (f"held-out {score.name} {score.text(score.before)} before training, best {score.text(score.best)} at "
            f"step {score.best_step}, last {score.text(score.score)} at step {score.step}{stopped}; kept step "
            f"{result.kept_step}")


def held_out_metrics(result: TrainResult, scorer: HeldOutScorer) -> dict:
    """The held-out scores for the model card: before, best (its step), last, which state was kept, and the curve."""
    score = result.held_out
    if score is None:
        return {}
    return {"metric": score.metric, "definition": scorer.definition, "before": round(score.before, 4),
            "best": round(score.best, 4), "best_step": score.best_step, "final": round(score.score, 4),
            "final_step": score.step, "kept_step": result.kept_step, "improved": result.improved,
            "tolerance": scorer.tolerance, "stopped_early": result.stopped_early,
            "per_class_best": {str(k): round(v, 4) for k, v in score.best_per_class.items()},
            "per_class_final": {str(k): round(v, 4) for k, v in score.per_class.items()},
            "scores": {str(k): round(v, 4) for k, v in result.scores.items()}}
