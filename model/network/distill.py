"""Knowledge distillation of the global bidirectional model into a small causal model for the device.

SEED.md wants local inference with an on-device model distilled to under 5 MB, and streaming updates need a causal
model. The student learns the teacher's whole predicted distribution, softened by a temperature, so it inherits
how the teacher ranks the *other* genres too (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network", eq. 2 and the T^2 gradient scaling):

    loss = T^2 * KL(softmax(teacher / T) || softmax(student / T)) + ce_weight * CE(student, next kept genre)

The teacher reads each example's whole window in both directions; the student reads the same window left to right,
which is all it will ever see on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from model.features.examples import Examples
from model.network.networks import ModelConfig, PreferenceLSTM

DEVICE_MODEL = ModelConfig(bidirectional=False, hidden_size=32, num_layers=1, dropout=0.0, head_dropout=0.0)
"""The default student: causal, one layer of 32 units, about 13 k parameters (about 55 kB as float32)."""


@dataclass(frozen=True)
class DistillConfig:
    """Attributes:
    temperature: softening temperature T of both distributions (1 = plain probabilities).
    ce_weight: weight of the cross-entropy on the true next genre (0 = pure distillation).
    epochs: passes over the examples.
    batch_size: examples per step.
    lr: Adam learning rate.
    seed: seeds the student's initial weights and the batch order.
    """

    temperature: float = 2.0
    ce_weight: float = 0.0
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-2
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0.0:
            raise ValueError(f"distill.temperature must be > 0. Found {self.temperature}.")
        if self.ce_weight < 0.0:
            raise ValueError(f"distill.ce_weight must be >= 0. Found {self.ce_weight}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"distill.epochs and distill.batch_size must be >= 1. Found {self.epochs}, {self.batch_size}.")
        if not self.lr > 0.0:
            raise ValueError(f"distill.lr must be > 0. Found {self.lr}.")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor, *,
                      temperature: float, ce_weight: float) -> torch.Tensor:
    """Mean over the batch of ``T^2 KL(teacher_T || student_T) + ce_weight * CE(student, targets)``."""
    soft_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    soft_student = F.log_softmax(student_logits / temperature, dim=-1)
    loss = temperature**2 * F.kl_div(soft_student, soft_teacher, reduction="batchmean", log_target=True)
    if ce_weight > 0.0:
        loss = loss + ce_weight * F.cross_entropy(student_logits, targets)
    return loss


@torch.no_grad()
def predict_logits(model: PreferenceLSTM, examples: Examples, batch_size: int = 1024) -> torch.Tensor:
    """Logits ``[N, 8]`` of ``model`` in evaluation mode for every example."""
    model.eval()
    parts = [model(part.x, part.lengths) for part in _chunks(examples, batch_size)]
    return torch.cat(parts) if parts else torch.zeros((0, 8))


def _chunks(examples: Examples, size: int):
    for start in range(0, len(examples), size):
        yield examples.subset(slice(start, start + size))


def new_student(config: ModelConfig = DEVICE_MODEL, *, seed: int = 0) -> PreferenceLSTM:
    """A freshly initialised causal model, its weights drawn from ``seed`` without touching the global RNG."""
    if config.bidirectional:
        raise ValueError("the device student must be causal (bidirectional=false): it streams one event at a time.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PreferenceLSTM(config)


def distill(teacher: PreferenceLSTM, examples: Examples, *, student_config: ModelConfig = DEVICE_MODEL,
            config: DistillConfig = DistillConfig()) -> PreferenceLSTM:
    """Train a new causal student to reproduce ``teacher`` on ``examples``; returns it in evaluation mode.

    The teacher is only read (its logits are computed once, in evaluation mode).

    Raises:
        ValueError: ``examples`` is empty or the student configuration is bidirectional.
    """
    if len(examples) == 0:
        raise ValueError("distillation needs at least one example. Found 0.")
    student = new_student(student_config, seed=config.seed)
    targets_soft = predict_logits(teacher, examples)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
    order_generator = torch.Generator().manual_seed(config.seed)
    student.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(examples), generator=order_generator)
        for start in range(0, len(examples), config.batch_size):
            index = order[start : start + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            logits = student(examples.x[index], examples.lengths[index])
            loss = distillation_loss(logits, targets_soft[index], examples.targets[index],
                                     temperature=config.temperature, ce_weight=config.ce_weight)
            loss.backward()
            optimizer.step()
    return student.eval()


def agreement(model: PreferenceLSTM, reference: PreferenceLSTM, examples: Examples) -> float:
    """Share of examples on which both models predict the same most likely genre (nan for no examples)."""
    if len(examples) == 0:
        return float("nan")
    same = predict_logits(model, examples).argmax(-1) == predict_logits(reference, examples).argmax(-1)
    return float(same.float().mean())
