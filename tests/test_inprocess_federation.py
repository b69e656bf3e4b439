"""``InProcessFederation``'s hooks: a given noise multiplier, the users' ids and seed, a user without examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.features.examples import empty_examples
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from privacy.accounting import PrivacyLedger
from protocol.instructions import DataInstructions
from server.settings import PopulationSettings, PrivacySettings, RunSettings
from simulations.federation.device_data import device_examples, simulated_data
from simulations.federation.inprocess import InProcessFederation
from simulations.population.population import PopulationConfig
import server.aggregation

WINDOW = 16
MODEL = ModelConfig(bidirectional=False, hidden_size=8, num_layers=1)


def _run(mode: str = "user") -> RunSettings:
    return RunSettings(seed=3, train=LocalTrainConfig(epochs=1, batch_size=8, max_examples=8), model=MODEL,
                       population=PopulationSettings(num_users=3, eval_users=0, days=7, window=WINDOW),
                       privacy=PrivacySettings(mode=mode, delta=1e-3))


def _arrays() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in PreferenceLSTM(MODEL).state_dict().items()}


@pytest.fixture(scope="module")
def users():
    data = simulated_data(PopulationConfig(seed=3, num_users=3, days=7), window=WINDOW)
    return [device_examples(data, uid)[0] for uid in range(3)]


def test_a_given_noise_multiplier_is_used_and_nothing_is_calibrated(monkeypatch, users):
    def no_calibration(**_):
        raise AssertionError("calibrate_noise_multiplier must not run when noise_multiplier is given.")

    monkeypatch.setattr(server.aggregation, "calibrate_noise_multiplier", no_calibration)
    federation = InProcessFederation(_run(), _arrays(), num_users=3, sample_rate=1.0, planned_rounds=2, stream=0,
                                     noise_multiplier=2.0)
    row = federation.round(users.__getitem__)
    expected = PrivacyLedger()
    expected.record(noise_multiplier=2.0, sample_rate=1.0)
    assert federation.noise_multiplier == 2.0 and federation.privacy_report()["noise_multiplier"] == 2.0
    assert row["epsilon"] == expected.epsilon(delta=1e-3)


def test_a_noise_multiplier_without_user_level_dp_is_refused():
    with pytest.raises(ValueError, match="only used under user-level DP"):
        InProcessFederation(_run("none"), _arrays(), num_users=3, sample_rate=1.0, planned_rounds=1, stream=0,
                            noise_multiplier=1.0)


def test_user_ids_must_name_every_user_once():
    with pytest.raises(ValueError, match="user_ids must name each of the 3 users"):
        InProcessFederation(_run("none"), _arrays(), num_users=3, sample_rate=1.0, planned_rounds=1, stream=0,
                            user_ids=[0, 1])


def test_a_drawn_user_without_examples_declines_and_adds_nothing(users):
    """Slot 2 empty gives the model that users 0 and 1 alone give (same streams, same ids): its all-zero contribution
    is counted as a reply, not as a participant."""
    def federation(num_users: int) -> InProcessFederation:
        return InProcessFederation(_run("none"), _arrays(), num_users=num_users, sample_rate=1.0, planned_rounds=1,
                                   stream=0)

    with_empty = federation(3)
    row = with_empty.round(lambda i: users[i] if i < 2 else empty_examples(WINDOW))
    two = federation(2)
    two.round(users.__getitem__)
    assert (row["sampled"], row["replies"], row["participants"]) == (3, 3, 2)
    assert all(np.array_equal(with_empty.arrays[k], two.arrays[k]) for k in two.arrays)


def test_the_ids_and_the_client_seed_are_what_seeds_local_training(users):
    """The same user trained under another id, or with another client seed, draws other local randomness."""
    def trained(**hooks) -> dict[str, np.ndarray]:
        federation = InProcessFederation(_run("none"), _arrays(), num_users=1, sample_rate=1.0, planned_rounds=1,
                                         stream=0, **hooks)
        federation.round(lambda _: users[0])
        return federation.arrays

    default = trained()
    assert all(np.array_equal(default[k], v) for k, v in trained(user_ids=[0], client_seed=3000).items())
    for other in (trained(user_ids=[7]), trained(client_seed=1)):
        assert not all(np.array_equal(default[k], v) for k, v in other.items())
