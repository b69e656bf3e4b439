"""On-device personalisation of the global prior: a personal bias on the genre logits, fit to the user's own log.

The global model is shared structure (how requests, hours and recent choices shift taste); what is only this
user's (a lasting fondness for a genre the recency counts under-weight) is an 8-number offset on the head's bias.
It is fit on the device by full-batch gradient descent on the user's own training points with an L2 pull towards
zero (a Gaussian prior: few points move it little), and kept only if it does not raise the loss on the user's own
latest points (early stopping on data the fit did not see). It never leaves the device and costs no privacy:
the global model is public post-processing, and the user's data never goes anywhere.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from model.features.examples import Examples
from model.network.networks import PreferenceLSTM


@dataclass(frozen=True)
class PersonaliseConfig:
    """Attributes:
    steps: gradient steps on the personal offset.
    lr: their step size.
    l2: weight of the pull towards zero, per training point.
    holdout_fraction: the user's latest points kept aside to decide whether the offset helps.
    """

    steps: int = 50
    lr: float = 0.1
    l2: float = 0.05
    holdout_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.steps < 0 or not self.lr > 0.0 or self.l2 < 0.0 or not 0.0 <= self.holdout_fraction < 1.0:
            raise ValueError("personalisation needs steps >= 0, lr > 0, l2 >= 0 and holdout_fraction in [0, 1); "
                             f"found {self.steps}, {self.lr}, {self.l2}, {self.holdout_fraction}.")


@torch.no_grad()
def _logits(model: PreferenceLSTM, examples: Examples) -> torch.Tensor:
    model.eval()
    return model(examples.x, examples.lengths)


def fit_personal_bias(model: PreferenceLSTM, examples: Examples, config: PersonaliseConfig = PersonaliseConfig()
                      ) -> torch.Tensor:
    """The user's personal logit offset ``[8]`` (zeros when it does not help on their latest points)."""
    n = len(examples)
    cut = n - int(round(n * config.holdout_fraction))
    if cut < 1 or config.steps == 0:
        return torch.zeros(model.head.out_features)
    logits = _logits(model, examples)  # the offset is added after the model, so the model runs once
    fit_logits, fit_targets = logits[:cut], examples.targets[:cut]
    bias = torch.zeros(logits.shape[-1], requires_grad=True)
    for _ in range(config.steps):  # torch.optim.SGD's step, written out: its first use costs a process ~2 s of imports
        loss = F.cross_entropy(fit_logits + bias, fit_targets) + config.l2 * bias.square().sum()
        (grad,) = torch.autograd.grad(loss, bias)
        with torch.no_grad():
            bias.add_(grad, alpha=-config.lr)
    bias = bias.detach()
    if cut < n:  # keep the offset only if the user's own latest points agree
        check_logits, check_targets = logits[cut:], examples.targets[cut:]
        if F.cross_entropy(check_logits + bias, check_targets) > F.cross_entropy(check_logits, check_targets):
            return torch.zeros_like(bias)
    return bias


def personalised(model: PreferenceLSTM, bias: torch.Tensor) -> PreferenceLSTM:
    """A copy of ``model`` whose head adds ``bias`` to every prediction (the global model is left unchanged)."""
    personal = copy.deepcopy(model)
    with torch.no_grad():
        personal.head.bias += bias
    return personal
