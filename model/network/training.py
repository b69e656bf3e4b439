"""Local training of the preference LSTM on one user's examples: plain, or DP-SGD.

DP-SGD (Abadi et al. 2016, Algorithm 1): Poisson-sampled batches, every per-sample gradient clipped to norm C,
Gaussian noise of std z*C added to their sum. Per-sample gradients come from ``model.per_sample`` (exact, fused);
clipping, noise and the update are Opacus' ``DPOptimizer`` in ``secure_mode`` (floating-point-safe noise, see
``privacy.randomness``). The noise and the Poisson batches draw from ``dp_generator``, which the caller seeds from
the device's own entropy; ``generator`` (dropout's global seed aside) drives only augmentation and plain
shuffling. Nothing here calibrates noise or computes epsilon: the caller passes a noise multiplier calibrated once
and records ``(z, sample_rate, steps)`` (``privacy.mechanisms.dp_sgd_schedule``) in a ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from model.features.augment import AugmentConfig, augment_batch
from model.features.examples import Examples
from model.network.networks import PreferenceLSTM
from privacy.mechanisms import dp_sgd_schedule
from privacy.record_level import RecordLevelDP

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class LocalTrainConfig:
    """Attributes:
    epochs: passes over the user's examples (in expectation, for Poisson sampling).
    batch_size: batch size; the *expected* batch size under DP-SGD's Poisson sampling.
    lr: learning rate.
    optimizer: "adam" or "sgd".
    weight_decay: L2 penalty of the optimizer.
    max_examples: train on at most this many of the most recent examples (0: all). Bounds a client's work per
        round, and tastes drift, so the recent past is the most informative.
    augment: sequence-level augmentation of training windows.
    """

    epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-2
    optimizer: str = "adam"
    weight_decay: float = 0.0
    max_examples: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"train.epochs and train.batch_size must be >= 1; found {self.epochs}, {self.batch_size}.")
        if not self.lr > 0.0:
            raise ValueError(f"train.lr must be > 0; found {self.lr}.")
        if self.max_examples < 0:
            raise ValueError(f"train.max_examples must be >= 0 (0 means all); found {self.max_examples}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer must be one of {list(OPTIMIZERS)}; found {self.optimizer!r}.")


@dataclass(frozen=True)
class LocalTrainResult:
    """What one local training run did. ``sample_rate`` and ``steps`` describe the DP-SGD mechanism (if any)."""

    loss: float
    steps: int
    num_examples: int
    sample_rate: float | None = None


@dataclass(frozen=True)
class EvalResult:
    top1: float
    nll: float
    num_examples: int


def _make_optimizer(model: nn.Module, config: LocalTrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, weight_decay=config.weight_decay)


def examples_kept(examples: Examples, max_examples: int) -> Examples:
    """The examples a client trains on in a round: its ``max_examples`` most recent (all when 0)."""
    if max_examples and len(examples) > max_examples:
        return examples.subset(slice(len(examples) - max_examples, len(examples)))
    return examples


@dataclass(frozen=True)
class LocalSchedule:
    """What one local training will do, fixed before it starts: the examples it trains on, its steps and, under
    DP-SGD, its Poisson sample rate (None without)."""

    examples: Examples
    steps: int
    sample_rate: float | None = None


def local_schedule(examples: Examples, config: LocalTrainConfig, *, dp: bool) -> LocalSchedule:
    """The one definition both trainers (``train_local``, ``model.network.batched_training``) and the device's ledger
    (``client.local_update``) read, so the ledger accounts DP-SGD on exactly the examples and steps that trained:
    the ``max_examples`` most recent examples; ``epochs`` passes of ``batch_size`` batches, or under DP-SGD
    ``privacy.mechanisms.dp_sgd_schedule``'s Poisson rate and steps."""
    examples = examples_kept(examples, config.max_examples)
    n = len(examples)
    if n == 0:
        return LocalSchedule(examples, 0)
    if not dp:
        return LocalSchedule(examples, config.epochs * -(-n // config.batch_size))
    sample_rate, steps = dp_sgd_schedule(num_examples=n, batch_size=config.batch_size, epochs=config.epochs)
    return LocalSchedule(examples, steps, sample_rate)


def train_local(
    model: PreferenceLSTM,
    examples: Examples,
    config: LocalTrainConfig,
    *,
    dp: RecordLevelDP | None = None,
    generator: torch.Generator,
    dp_generator: torch.Generator | None = None,
) -> LocalTrainResult:
    """Train ``model`` in place on ``examples``; returns the mean training loss and the mechanism that ran.

    ``dp_generator`` (required with ``dp``) draws DP-SGD's noise and Poisson batches; ``generator`` augmentation.
    """
    if dp is not None and dp_generator is None:
        raise ValueError("DP-SGD needs dp_generator: the source of its noise and batches (the device's own entropy).")
    schedule = local_schedule(examples, config, dp=dp is not None)
    if schedule.steps == 0:
        return LocalTrainResult(loss=float("nan"), steps=0, num_examples=0)
    model.train()
    optimizer = _make_optimizer(model, config)
    if dp is None:
        return _train_plain(model, schedule.examples, config, optimizer, generator)
    return _train_dp_sgd(model, schedule, config, dp, optimizer, generator, dp_generator)


def _batch_loss(model: PreferenceLSTM, examples: Examples, index: torch.Tensor, config: LocalTrainConfig,
                generator: torch.Generator, reduction: str) -> torch.Tensor:
    x, lengths = augment_batch(examples.x[index], examples.lengths[index], config.augment, generator)
    return F.cross_entropy(model(x, lengths), examples.targets[index], reduction=reduction)


def _train_plain(model, examples, config, optimizer, generator) -> LocalTrainResult:
    n = len(examples)
    total, steps = 0.0, 0
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, config.batch_size):
            index = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = _batch_loss(model, examples, index, config, generator, "mean")
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            steps += 1
    return LocalTrainResult(loss=total / (n * config.epochs), steps=steps, num_examples=n)


def _train_dp_sgd(model, schedule: LocalSchedule, config, dp, optimizer, generator, dp_generator) -> LocalTrainResult:
    examples, steps, sample_rate = schedule.examples, schedule.steps, schedule.sample_rate
    n = len(examples)
    expected_batch = sample_rate * n
    from opacus.optimizers import DPOptimizer  # here, not at the top: non-DP clients never pay Opacus' import

    dp_optimizer = DPOptimizer(
        optimizer,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        expected_batch_size=expected_batch,
        loss_reduction="mean",
        generator=dp_generator,
        secure_mode=True,  # each noise value the sum of 4 draws, halved (Holohan & Braghin 2021): float-safe
    )
    params = [p for p in model.parameters() if p.requires_grad]
    total, seen = 0.0, 0
    model.per_sample_grads = True
    try:
        for _ in range(steps):
            dp_optimizer.zero_grad(set_to_none=True)
            index = torch.nonzero(torch.rand(n, generator=dp_generator) < sample_rate).squeeze(1)
            if len(index) == 0:
                # An empty Poisson batch still releases noise: the accountant counts this step.
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape))
            else:
                # Summed loss: grad_sample is each example's own gradient; DPOptimizer divides by the
                # expected batch size after clipping and noising ("mean" reduction).
                loss = _batch_loss(model, examples, index, config, generator, "sum")
                loss.backward()
                total += float(loss.detach())
                seen += len(index)
            dp_optimizer.step()
    finally:
        model.per_sample_grads = False
        for p in params:
            p.grad_sample = None
    return LocalTrainResult(loss=total / max(seen, 1), steps=steps, num_examples=n, sample_rate=sample_rate)


@torch.no_grad()
def evaluate(model: PreferenceLSTM, examples: Examples, batch_size: int = 1024) -> EvalResult:
    """Top-1 accuracy and mean negative log-likelihood of the next kept genre."""
    n = len(examples)
    if n == 0:
        return EvalResult(top1=float("nan"), nll=float("nan"), num_examples=0)
    model.eval()
    correct, nll = 0, 0.0
    for start in range(0, n, batch_size):
        part = examples.subset(slice(start, start + batch_size))
        logits = model(part.x, part.lengths)
        nll += float(F.cross_entropy(logits, part.targets, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == part.targets).sum())
    return EvalResult(top1=correct / n, nll=nll / n, num_examples=n)
