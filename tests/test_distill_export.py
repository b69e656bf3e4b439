"""Distillation makes a small causal student agree with the teacher (its export: tests/test_device_runtime.py)."""

from __future__ import annotations

import pytest
import torch

from model.network.distill import (
    DEVICE_MODEL,
    DistillConfig,
    agreement,
    distill,
    distillation_loss,
    new_student,
)
from model.device.export import state_dict_bytes
from model.features.examples import Examples, build_examples
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig, train_local
from simulations.population.population import Population, PopulationConfig

WINDOW = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a small shared machine, thread hand-offs cost more than these tiny models' work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def population():
    return Population(PopulationConfig(num_users=60, days=14))


@pytest.fixture(scope="module")
def split(population):
    """Examples of 40 training users and 20 held-out users."""
    per_user = [build_examples(population.user(i).events(), WINDOW) for i in range(60)]
    return Examples.concat(per_user[:40], WINDOW), Examples.concat(per_user[40:], WINDOW)


@pytest.fixture(scope="module")
def teacher(split):
    """A bidirectional global model, small and briefly trained so the test stays fast."""
    torch.manual_seed(0)
    model = PreferenceLSTM(ModelConfig(bidirectional=True, hidden_size=32, num_layers=1))
    train_local(model, split[0], LocalTrainConfig(epochs=1, batch_size=32, lr=1e-2),
                generator=torch.Generator().manual_seed(0))
    return model.eval()


def test_student_agreement_with_teacher_improves_on_held_out_users(split, teacher):
    train, held_out = split
    untrained = agreement(new_student(seed=0), teacher, held_out)
    student = distill(teacher, train, config=DistillConfig(epochs=2, seed=0))
    trained = agreement(student, teacher, held_out)
    assert student.is_causal and not student.training
    assert trained > untrained + 0.15, (untrained, trained)


def test_student_is_smaller_than_one_megabyte():
    student = new_student(DEVICE_MODEL)
    assert state_dict_bytes(student) < 1_000_000
    assert sum(p.numel() for p in student.parameters()) < 20_000


def test_distillation_loss_is_zero_when_student_equals_teacher():
    logits = torch.randn(5, 8)
    targets = torch.zeros(5, dtype=torch.int64)
    assert float(distillation_loss(logits, logits, targets, temperature=2.0, ce_weight=0.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(logits + 1.0, logits, targets, temperature=3.0, ce_weight=0.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(-logits, logits, targets, temperature=2.0, ce_weight=0.0)) > 0.0


def test_bidirectional_student_is_refused():
    with pytest.raises(ValueError, match="must be causal"):
        new_student(ModelConfig(bidirectional=True))


def test_invalid_distill_config_states_the_rule():
    with pytest.raises(ValueError, match=r"temperature must be > 0. Found 0.0"):
        DistillConfig(temperature=0.0)
