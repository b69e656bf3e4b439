"""Batched local training (``model.network.batched_training``, ``client.local_update.local_updates``) gives each user exactly
the update its own sequential ``train_local`` / ``local_update`` gives (within 1e-5), under plain SGD and
record-level DP-SGD with seeded noise; configurations it cannot reproduce are trained one by one; and an in-process
federation releases the same model and held-out top-1 either way."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

import client.local_update as local_update_module
from client.device_ledger import DeviceLedger
from client.local_update import Decline, local_update, local_updates
from model.features.augment import AugmentConfig
from model.features.examples import Examples, empty_examples
from model.network.batched_training import USERS_PER_BATCH, batchable, train_local_batched
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig, evaluate, train_local
from privacy.record_level import RecordLevelDP
from protocol.instructions import TrainInstructions
from simulations.federation.references import train_central
from server.settings import PopulationSettings, PrivacySettings, RunSettings
from simulations.federation.device_data import device_examples, simulated_data
from simulations.federation.inprocess import InProcessFederation
from simulations.population.population import PopulationConfig

TOLERANCE = 1e-5
WINDOW = 16
PRIOR = ModelConfig(bidirectional=False, hidden_size=16, num_layers=1, dropout=0.0, head_dropout=0.0,
                    style_embedding_dim=8, residual=True)
"""conf/model/prior.yaml, the default model."""
DATA = simulated_data(PopulationConfig(seed=5, num_users=8, days=14), window=WINDOW)
TRAIN = LocalTrainConfig(epochs=2, batch_size=8, lr=0.3, optimizer="sgd", weight_decay=0.01, max_examples=24,
                         augment=AugmentConfig(truncate_prob=0.5, mask_prob=0.5))
DP = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=0.5)


@pytest.fixture(scope="module")
def users() -> list[Examples]:
    """Synthetic users' training examples: several sizes (some above max_examples), and one user without any."""
    examples = [device_examples(DATA, user)[0] for user in range(6)]
    examples[2] = examples[2].subset(slice(0, 3))
    examples[4] = empty_examples(WINDOW)
    assert len({len(e) for e in examples}) >= 4
    return examples


def _model(config: ModelConfig = PRIOR) -> PreferenceLSTM:
    torch.manual_seed(0)
    model = PreferenceLSTM(config)
    with torch.no_grad():  # away from the residual head's zero start, so every parameter's gradient is exercised
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference between two sets of arrays or tensors, by name."""
    def array(value) -> np.ndarray:
        return np.asarray(value.detach() if isinstance(value, torch.Tensor) else value, dtype=np.float64)

    return max(float(np.max(np.abs(array(a[k]) - array(b[k])))) for k in a)


@pytest.mark.parametrize(("dp", "optimizer"), [(None, "sgd"), (DP, "sgd"), (None, "adam"), (DP, "adam")],
                         ids=["sgd", "dp-sgd", "adam", "dp-adam"])
def test_batched_training_matches_each_users_own_train_local(users, dp, optimizer):
    model, train = _model(), replace(TRAIN, optimizer=optimizer, lr=0.3 if optimizer == "sgd" else 0.01)
    trained, results = train_local_batched(
        model, users, train, dp=dp, generators=[torch.Generator().manual_seed(k) for k in range(len(users))],
        dp_generators=[torch.Generator().manual_seed(100 + k) for k in range(len(users))])
    for k, examples in enumerate(users):
        alone = copy.deepcopy(model)
        result = train_local(alone, examples, train, dp=dp, generator=torch.Generator().manual_seed(k),
                             dp_generator=torch.Generator().manual_seed(100 + k))
        own = {name: p.detach() for name, p in alone.named_parameters()}
        assert _max_difference(own, trained[k]) <= TOLERANCE
        assert (results[k].steps, results[k].num_examples, results[k].sample_rate) == \
            (result.steps, result.num_examples, result.sample_rate)
        assert results[k].loss == pytest.approx(result.loss, abs=TOLERANCE, nan_ok=True)
    moved = [k for k, e in enumerate(users) if len(e)]
    assert all(_max_difference(trained[k], dict(model.named_parameters())) > 1e-3 for k in moved)


def test_more_users_than_one_batch_holds_are_trained_in_parts(users, monkeypatch):
    """Users past ``USERS_PER_BATCH`` go to a second computation with the same result."""
    model = _model()
    generators = lambda: [torch.Generator().manual_seed(k) for k in range(len(users))]  # noqa: E731
    whole, _ = train_local_batched(model, users, TRAIN, generators=generators())
    monkeypatch.setattr("model.network.batched_training.USERS_PER_BATCH", 2)
    parts, _ = train_local_batched(model, users, TRAIN, generators=generators())
    assert USERS_PER_BATCH > len(users)
    assert all(_max_difference(a, b) <= TOLERANCE for a, b in zip(whole, parts))


@pytest.mark.parametrize("model_config", [PRIOR, replace(PRIOR, bidirectional=True)], ids=["batched", "one-by-one"])
def test_the_central_reference_is_the_model_train_local_trains(users, model_config):
    """``train_central`` takes batched training's path when the model allows it: the model ``train_local`` trains."""
    pooled = Examples.concat([e for e in users if len(e)], WINDOW)
    config = LocalTrainConfig(epochs=2, batch_size=16, lr=3e-3, optimizer="adam", max_examples=0)
    central = train_central(pooled, model_config, config, seed=3)
    torch.manual_seed(3)
    reference = PreferenceLSTM(model_config)
    start = copy.deepcopy(reference.state_dict())
    train_local(reference, pooled, config, generator=torch.Generator().manual_seed(3))
    assert _max_difference(dict(central.named_parameters()), dict(reference.named_parameters())) <= TOLERANCE
    assert _max_difference(dict(central.named_parameters()), start) > 1e-3  # it trained


def _instructions(model: ModelConfig = PRIOR, record: RecordLevelDP | None = None) -> TrainInstructions:
    return TrainInstructions(round=2, seed=7, model=model, train=TRAIN, data=DATA, clipping_norm=0.5, record=record,
                             noise="seeded")


def _ledgers(exhausted: int) -> list[DeviceLedger]:
    """Fresh ledgers; user ``exhausted``'s has already spent far beyond any budget."""
    ledgers = [DeviceLedger(None) for _ in range(6)]
    ledgers[exhausted].record(noise_multiplier=0.3, sample_rate=1.0, steps=200)
    return ledgers


@pytest.mark.parametrize("record", [None, RecordLevelDP(1.0, 0.5, target_epsilon=50.0, delta=1e-3)],
                         ids=["user-level", "user-and-record-level"])
def test_local_updates_match_local_update_user_by_user(users, record):
    """Same contribution (update and statistics) and ledgers as each user's own ``local_update``; a declined user stays
    declined."""
    arrays = {k: v.detach().numpy().copy() for k, v in _model().state_dict().items()}
    instructions, ids = _instructions(record=record), [11, 12, 13, 14, 15, 16]
    batched_ledgers, own_ledgers = _ledgers(exhausted=1), _ledgers(exhausted=1)
    batched = local_updates(arrays, instructions, users, batched_ledgers, ids, simulated=True)
    for k, examples in enumerate(users):
        own = local_update(arrays, instructions, examples, own_ledgers[k], ids[k], simulated=True)
        assert batched[k].declined == own.declined
        assert _max_difference(batched[k].update, own.update) <= TOLERANCE
        assert np.allclose(batched[k].statistics, own.statistics, atol=TOLERANCE)
        assert batched_ledgers[k].history == own_ledgers[k].history
    expected = [Decline.NO, Decline.RECORD_BUDGET if record else Decline.NO, Decline.NO, Decline.NO,
                Decline.NO_DATA, Decline.NO]
    assert [u.declined for u in batched] == expected
    assert any(u.statistics[0] > 0 and u.statistics[1] == 0 for u in batched)  # user-level clipping ran


@pytest.mark.parametrize("model", [
    ModelConfig(bidirectional=False, hidden_size=8, num_layers=1, head_dropout=0.5),
    ModelConfig(bidirectional=False, hidden_size=8, num_layers=2, dropout=0.0, head_dropout=0.0),
    ModelConfig(bidirectional=True, hidden_size=8, num_layers=1, dropout=0.0, head_dropout=0.0),
], ids=["dropout", "two-layers", "bidirectional"])
def test_what_cannot_be_batched_exactly_is_trained_one_by_one(users, model):
    """Dropout (torch's global generator), more layers or directions: ``local_updates`` is ``local_update`` user by
    user, bit for bit, and ``train_local_batched`` refuses them."""
    assert batchable(PRIOR) and not batchable(model)
    arrays = {k: v.detach().numpy().copy() for k, v in _model(model).state_dict().items()}
    instructions = _instructions(model)
    together = local_updates(arrays, instructions, users[:3], [DeviceLedger(None) for _ in range(3)], [1, 2, 3])
    for k in range(3):
        own = local_update(arrays, instructions, users[k], DeviceLedger(None), k + 1)
        assert all(np.array_equal(together[k].update[name], own.update[name]) for name in own.update)
    with pytest.raises(ValueError, match="cannot be trained batched"):
        train_local_batched(_model(model), users[:2], TRAIN, generators=[torch.Generator(), torch.Generator()])


def _federation(users: list[Examples], mode: str) -> InProcessFederation:
    record = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=0.5, target_epsilon=100.0) if mode == "both" else None
    run = RunSettings(seed=3, train=TRAIN, model=PRIOR,
                      population=PopulationSettings(num_users=len(users), eval_users=0, days=14, window=WINDOW),
                      privacy=PrivacySettings(mode=mode, delta=1e-3, record=record, noise="seeded"))
    arrays = {k: v.detach().numpy().copy() for k, v in _model().state_dict().items()}
    return InProcessFederation(run, arrays, num_users=len(users), sample_rate=0.8, planned_rounds=3, stream=0)


@pytest.mark.parametrize("mode", ["user", "both"])
def test_a_batched_federation_releases_the_sequential_model(users, mode, monkeypatch):
    """Three rounds of DP-FedAvg with seeded noise: the released model within 1e-5 and the same held-out top-1 as
    with every user trained on its own (``batchable`` switched off: the sequential path itself runs)."""
    held_out = Examples.concat([device_examples(DATA, user)[1] for user in range(6)], WINDOW)

    def released(federation: InProcessFederation) -> tuple[dict, float]:
        rows = [federation.round(users.__getitem__) for _ in range(3)]
        assert sum(row["replies"] for row in rows) > 6
        model = PreferenceLSTM(PRIOR)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in federation.arrays.items()})
        return federation.arrays, evaluate(model, held_out).top1

    batched_model, batched_top1 = released(_federation(users, mode))
    monkeypatch.setattr(local_update_module, "batchable", lambda *_: False)
    sequential_model, sequential_top1 = released(_federation(users, mode))
    assert _max_difference(batched_model, sequential_model) <= TOLERANCE
    assert batched_top1 == sequential_top1
