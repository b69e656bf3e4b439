"""Local training of K users at once, all starting from the same global model: ``train_local`` with a user dimension.

Each user keeps its own copy of the parameters (stacked ``[K, *shape]``), its own examples, its own generators and
its own number of steps; step s trains every user that still has a step s on its own batch, padded to the longest
batch of that step (padded entries have weight zero, so they add exactly nothing). Users are ordered by their
number of steps, so the users still training at step s are a prefix of the stack and finished users are simply
left out. The forward and backward pass are ``model.network.batched_model`` (the fused LSTM recurrence with the users in
its batch-of-weights dimension), so one step costs a few batched matmuls for all K users instead of K module calls.

Each user's update is the one ``model.network.training.train_local`` gives it, up to float rounding: the same examples
(``max_examples``), the same batches and augmentation (``randperm`` and augmentation from its ``generator``, in
the same order), and under record-level DP-SGD the same Poisson batches and noise (``torch.rand`` and Opacus'
``_generate_noise`` in secure mode from its ``dp_generator``, parameter by parameter, in ``DPOptimizer``'s order),
per-sample clipping over all parameters jointly as ``DPOptimizer.clip_and_accumulate`` does it, then SGD.

What cannot be reproduced exactly is not batched: ``batchable`` is the one rule (a causal one-layer model without
dropout, which would draw from torch's global generator). The caller trains the others one by one. The optimizer
is SGD or Adam (``torch.optim``'s updates with ``train_local``'s settings, per-user state stacked like the
parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.features.augment import augment_batch
from model.features.examples import Examples
from model.network.batched_model import PARAMETER_NAMES, StackedBatch, loss_and_gradients
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig, LocalTrainResult, local_schedule
from privacy.record_level import RecordLevelDP

USERS_PER_BATCH = 32
"""Users trained as one computation: past about 32 a larger batch is no faster per user (measured), and memory grows
with it (about 1 MB of activations per user)."""


def batchable(model: ModelConfig) -> bool:
    """Whether users of this model can be trained batched, each exactly as on its own."""
    return not model.bidirectional and model.num_layers == 1 and model.dropout == 0.0 and model.head_dropout == 0.0


@dataclass
class _User:
    """One user's state during batched training."""

    examples: Examples
    generator: torch.Generator
    dp_generator: torch.Generator | None
    steps: int
    sample_rate: float | None = None
    order: torch.Tensor | None = None
    total: float = 0.0
    seen: int = 0

    def batch(self, step: int, config: LocalTrainConfig) -> torch.Tensor:
        """Indices of this user's examples at ``step``, drawn exactly as ``train_local`` draws them."""
        n = len(self.examples)
        if self.sample_rate is not None:  # DP-SGD: a Poisson batch
            return torch.nonzero(torch.rand(n, generator=self.dp_generator) < self.sample_rate).squeeze(1)
        per_epoch = -(-n // config.batch_size)
        if step % per_epoch == 0:
            self.order = torch.randperm(n, generator=self.generator)
        start = (step % per_epoch) * config.batch_size
        return self.order[start : start + config.batch_size]  # type: ignore[index]


def train_local_batched(
    model: PreferenceLSTM,
    examples: Sequence[Examples],
    config: LocalTrainConfig,
    *,
    dp: RecordLevelDP | None = None,
    generators: Sequence[torch.Generator],
    dp_generators: Sequence[torch.Generator] | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[LocalTrainResult]]:
    """Train one copy of ``model`` per entry of ``examples``; ``model`` itself is not changed.

    Returns each user's trained parameters (by name) and its ``LocalTrainResult``, in the order of ``examples``.
    ``generators[k]`` and ``dp_generators[k]`` play the roles they play in ``train_local`` for user k. At most
    ``USERS_PER_BATCH`` users are trained at once (memory grows with them: activations are kept per user and step).
    """
    if not batchable(model.config):
        raise ValueError(f"users of this model cannot be trained batched (model.network.batched_training.batchable): "
                         f"{model.config}. Train them one by one with model.network.training.train_local.")
    if len(generators) != len(examples) or (dp is not None and (dp_generators is None or len(dp_generators) != len(examples))):
        raise ValueError(f"one generator (and with dp one dp_generator) per user is needed; found {len(examples)} users, "
                         f"{len(generators)} generators, {None if dp_generators is None else len(dp_generators)} dp_generators.")
    if tuple(name for name, _ in model.named_parameters()) != PARAMETER_NAMES:
        raise ValueError(f"the model's parameters must be {list(PARAMETER_NAMES)} in this order; found "
                         f"{[name for name, _ in model.named_parameters()]}.")
    params: list[dict[str, torch.Tensor]] = []
    results: list[LocalTrainResult] = []
    for first in range(0, len(examples), USERS_PER_BATCH):
        part = slice(first, first + USERS_PER_BATCH)
        users = [_user(e, config, dp, g, None if dp_generators is None else dp_generators[first + k])
                 for k, (e, g) in enumerate(zip(examples[part], generators[part]))]
        trained = _train_users(model, users, config, dp)
        params += trained
        results += [_result(u, config) for u in users]
    return params, results


def _train_users(model: PreferenceLSTM, users: list[_User], config: LocalTrainConfig,
                 dp: RecordLevelDP | None) -> list[dict[str, torch.Tensor]]:
    """Train one chunk of users from ``model``'s parameters; returns their parameters in the order of ``users``."""
    rank = sorted(range(len(users)), key=lambda k: -users[k].steps)  # users training at step s: a prefix
    start = dict(model.named_parameters())
    params = {name: start[name].detach().unsqueeze(0).repeat(len(users), *([1] * start[name].dim()))
              for name in PARAMETER_NAMES}
    moments = [{name: torch.zeros_like(value) for name, value in params.items()} for _ in range(2)] \
        if config.optimizer == "adam" else []
    for step in range(users[rank[0]].steps if users else 0):
        active = [users[k] for k in rank if users[k].steps > step]
        grads = _gradients({name: value[: len(active)] for name, value in params.items()}, active, step, config, dp,
                           model.config.residual)
        for name, grad in grads.items():
            if config.weight_decay:
                grad = grad.add(params[name][: len(active)], alpha=config.weight_decay)
            if moments:
                _adam(params[name][: len(active)], grad, *(m[name][: len(active)] for m in moments), step + 1, config.lr)
            else:  # torch.optim.SGD without momentum, as train_local builds it
                params[name][: len(active)].add_(grad, alpha=-config.lr)
    unranked = {k: position for position, k in enumerate(rank)}
    return [{name: params[name][unranked[k]] for name in PARAMETER_NAMES} for k in range(len(users))]


def _user(examples: Examples, config: LocalTrainConfig, dp: RecordLevelDP | None, generator: torch.Generator,
          dp_generator: torch.Generator | None) -> _User:
    schedule = local_schedule(examples, config, dp=dp is not None)
    return _User(schedule.examples, generator, dp_generator, steps=schedule.steps, sample_rate=schedule.sample_rate)


def _gradients(params: dict[str, torch.Tensor], users: list[_User], step: int, config: LocalTrainConfig,
               dp: RecordLevelDP | None, residual: bool) -> dict[str, torch.Tensor]:
    """Step ``step``'s gradient of every user in ``users`` (aligned with ``params``): of its mean loss, or DP-SGD's
    clipped, noised and scaled one; ``[len(users), *shape]`` by name."""
    parts = []
    for user in users:
        index = user.batch(step, config)
        x, lengths = augment_batch(user.examples.x[index], user.examples.lengths[index], config.augment, user.generator)
        parts.append((x, lengths, user.examples.targets[index]))
    batch = StackedBatch.of(parts, mean=dp is None)
    losses, grads = loss_and_gradients(params, batch, residual=residual, per_sample=dp is not None)
    for user, loss, count in zip(users, losses.tolist(), batch.counts.tolist()):
        user.total += loss if dp is not None else loss * count
        user.seen += count
    return _clip_and_noise(grads, users, dp) if dp is not None else grads


def _adam(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int,
          lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """``torch.optim.Adam``'s update with its defaults (weight decay already in ``grad``), in place; every user in
    the stack is at the same ``step`` (users that have finished are not in it)."""
    exp_avg.lerp_(grad, 1 - betas[0])
    exp_avg_sq.mul_(betas[1]).addcmul_(grad, grad, value=1 - betas[1])
    step_size = lr / (1 - betas[0] ** step)
    denom = (exp_avg_sq.sqrt() / (1 - betas[1] ** step) ** 0.5).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


def _clip_and_noise(per_sample: dict[str, torch.Tensor], users: list[_User], dp: RecordLevelDP) -> dict[str, torch.Tensor]:
    """``DPOptimizer.pre_step`` for each user: clip each example's gradient (all parameters jointly), sum, add
    secure-mode noise of std z*C from the user's ``dp_generator``, divide by the user's expected batch size."""
    from opacus.optimizers.optimizer import _generate_noise  # Opacus' own draw, so seeded runs match DPOptimizer's

    k, b = next(iter(per_sample.values())).shape[:2]
    norms = torch.stack([g.reshape(k, b, -1).norm(2, dim=-1) for g in per_sample.values()], dim=2).norm(2, dim=2)
    factor = (dp.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    summed = {name: torch.einsum("kb,kb...->k...", factor, g) for name, g in per_sample.items()}
    std = dp.noise_multiplier * dp.max_grad_norm
    for j, user in enumerate(users):
        expected = user.sample_rate * len(user.examples)  # type: ignore[operator]
        for name in PARAMETER_NAMES:
            noise = _generate_noise(std=std, reference=summed[name][j], generator=user.dp_generator, secure_mode=True)
            summed[name][j] = (summed[name][j] + noise) / expected
    return summed


def _result(user: _User, config: LocalTrainConfig) -> LocalTrainResult:
    n = len(user.examples)
    if n == 0:
        return LocalTrainResult(loss=float("nan"), steps=0, num_examples=0)
    if user.sample_rate is None:
        return LocalTrainResult(loss=user.total / (n * config.epochs), steps=user.steps, num_examples=n)
    return LocalTrainResult(loss=user.total / max(user.seen, 1), steps=user.steps, num_examples=n,
                            sample_rate=user.sample_rate)
