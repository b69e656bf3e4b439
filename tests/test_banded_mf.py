"""privacy.mechanism=bandmf: DP-FTRL with a banded matrix factorisation, and the separation it rests on."""

import itertools
import math

import numpy as np
import pytest

from privacy.accounting import PrivacyLedger, calibrate_noise_multiplier
from privacy.banded_mf import (
    CorrelatedNoise,
    banded_factor,
    banded_sensitivity,
    banded_sqrt_factor,
    band_mask,
    factorization_error,
    participations,
    prefix_sum_workload,
)
from privacy.banded_release import BandedMatrixGaussian, banded_noise_multiplier
from privacy.contribution import STATISTICS
from privacy.errors import PrivacyConfigError
from privacy.randomness import SeededNoise
from server.round import band_ranking, band_sample
from server.settings import settings_from_config
from validation.config import ConfigError


@pytest.mark.parametrize("rounds, bands", [(12, 1), (12, 3), (20, 10), (20, 20)])
def test_the_factor_is_banded_with_unit_columns_and_no_worse_than_its_start(rounds, bands):
    factor = banded_factor(rounds, bands)
    assert np.all(factor * (1.0 - band_mask(rounds, bands)) == 0.0)
    assert np.allclose(np.linalg.norm(factor, axis=0), 1.0) or bands == 1
    assert np.all(np.diag(factor) > 0.0)
    assert factorization_error(factor) <= factorization_error(banded_sqrt_factor(rounds, bands)) + 1e-12
    assert np.array_equal(factor, banded_factor(rounds, bands))  # deterministic: the device computes the same C


def test_more_bands_cost_less_error_and_one_band_is_independent_noise():
    errors = [factorization_error(banded_factor(20, b)) for b in (1, 2, 5, 10, 20)]
    assert errors == sorted(errors, reverse=True)
    assert errors[0] == pytest.approx(math.sqrt(21 / 2))  # C = I: the error of the prefix sums of independent noise
    assert errors[-1] < 0.6 * errors[0]


def test_the_sensitivity_is_the_largest_movement_over_every_separated_participation():
    """Brute force: every set of rounds at least ``bands`` apart, any sign of each contribution; a pattern closer
    than that moves C X further, so the device's separation is what the bound rests on."""
    rounds, bands, k = 9, 3, 3
    factor = banded_factor(rounds, bands)
    bound = banded_sensitivity(factor, bands=bands, max_participations=k)
    assert bound == pytest.approx(math.sqrt(k))
    worst = 0.0
    for size in range(1, k + 1):
        for joined in itertools.combinations(range(rounds), size):
            if any(b - a < bands for a, b in zip(joined, joined[1:])):
                continue
            for signs in itertools.product((1.0, -1.0), repeat=size):
                x = np.zeros(rounds)
                x[list(joined)] = signs
                worst = max(worst, float(np.linalg.norm(factor @ x)))
    assert worst == pytest.approx(bound)
    closer = np.zeros(rounds)
    closer[[0, 1, 2]] = 1.0  # three rounds in a row
    assert np.linalg.norm(factor @ closer) > bound
    with pytest.raises(ValueError, match="not lower triangular with 2 bands"):
        banded_sensitivity(factor, bands=2, max_participations=k)


def test_the_correlated_noise_is_c_inverse_z_row_by_row():
    factor = banded_factor(20, 5)
    z = np.random.default_rng(0).normal(size=(20, 7))
    noise = CorrelatedNoise(factor, 5)
    rows = np.stack([noise.next(row) for row in z])
    assert np.allclose(rows, np.linalg.solve(factor, z), atol=1e-12)
    with pytest.raises(RuntimeError, match="covers 20 rounds"):
        noise.next(z[0])


def _mechanism(*, rounds=10, bands=5, z=1.0, population=100, target=None):
    return BandedMatrixGaussian(bands=bands, rounds=rounds, clipping_norm=1.0, noise_multiplier=z, sample_rate=0.5,
                                population=population, noise=SeededNoise([3]), ledger=PrivacyLedger(), delta=1e-5,
                                accountant="rdp", target_epsilon=target)


def test_the_released_models_carry_b_z_the_factorisations_noise():
    """Sum the released means (the model of FedAvg at server learning rate 1): its noise is B Z = A C^-1 Z, each
    row of Z i.i.d. N(0, (z S)^2), here measured on 400 coordinates against the factor's own error."""
    mechanism = _mechanism(rounds=10, bands=5, z=2.0, population=10)
    size = 400
    released = []
    for _ in range(10):
        mean, _ = mechanism.release_sum({"w": np.zeros(size)}, np.zeros(len(STATISTICS)))
        released.append(mean["w"] * mechanism.expected_clients)
    prefix = np.cumsum(np.stack(released), axis=0)
    expected = prefix_sum_workload(10) @ np.linalg.inv(mechanism.factor)  # B
    std = 2.0 * mechanism.sensitivity
    predicted = np.sqrt(np.square(expected).sum(axis=1)) * std  # each row's noise std
    measured = prefix.std(axis=1)
    assert np.allclose(measured, predicted, rtol=0.15)
    assert mechanism.expected_clients == pytest.approx(2.0)  # N / b


def test_the_ledger_counts_the_rounds_a_device_can_join_unamplified():
    mechanism = _mechanism(rounds=10, bands=4, z=1.5)
    counts = []
    for _ in range(10):
        mechanism.release_sum({"w": np.zeros(3)}, np.zeros(len(STATISTICS)))
        counts.append(mechanism.ledger.steps)
    assert counts == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]  # ceil(t / 4) after t rounds
    assert mechanism.ledger.history == [(1.5, 1.0, 3)]
    assert mechanism.max_participations == participations(10, 4) == 3


def test_the_run_is_calibrated_to_spend_its_budget_over_k_releases_and_stops_there():
    z = banded_noise_multiplier(target_epsilon=2.0, delta=1e-6, rounds=20, bands=10, accountant="rdp")
    assert z == calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-6, sample_rate=1.0, steps=2, accountant="rdp")
    mechanism = BandedMatrixGaussian(bands=10, rounds=20, clipping_norm=0.5, noise_multiplier=z, sample_rate=0.1,
                                     population=1000, noise=SeededNoise([1]), ledger=PrivacyLedger(), delta=1e-6,
                                     accountant="rdp", target_epsilon=2.0)
    for _ in range(20):
        assert mechanism.epsilon_if_next_passes_budget() is None
        mechanism.release_sum({"w": np.zeros(3)}, np.zeros(len(STATISTICS)))
    assert 1.9 < mechanism.epsilon() <= 2.0
    assert mechanism.epsilon_if_next_passes_budget(sample_rate=0.01) is not None  # an unplanned evaluation: refused


def test_each_candidate_joins_every_bands_th_round_and_the_groups_part_the_candidates():
    candidates = list(range(1000, 1103))
    ranked = band_ranking(b"k" * 16, candidates)
    groups = [band_sample(ranked, t, 4) for t in range(1, 13)]
    assert sorted(sum(groups[:4], [])) == candidates  # one band of rounds: everyone exactly once
    for t in range(4, 12):
        assert groups[t] == groups[t - 4]
    assert {len(g) for g in groups} <= {25, 26}
    assert band_sample(band_ranking(b"x" * 16, candidates), 1, 4) != groups[0]  # the key decides the groups


def _settings(compose_config, *overrides):
    return settings_from_config(compose_config("privacy=bandmf", "population=small", *overrides))


def test_bandmf_settings_derive_the_bands_and_refuse_what_its_analysis_does_not_cover(compose_config):
    from server.settings import bands_of

    assert bands_of(_settings(compose_config, "simulation.sample_rate=0.25", "simulation.rounds=20")) == 4
    assert bands_of(_settings(compose_config, "privacy.bands=7", "simulation.rounds=20")) == 7
    refused = {
        "privacy.clipping=adaptive": "privacy.clipping=fixed",
        "privacy.bands=0": "privacy.bands",
        "privacy.bands=50": "privacy.bands must be <= simulation.rounds",
        "privacy.mode=distributed": "mode user or both",
        "privacy.mechanism=dpsgd": "privacy.mechanism must be one of",
    }
    for override, text in refused.items():  # each before anything starts, naming the key
        with pytest.raises((ConfigError, PrivacyConfigError), match=text):
            _settings(compose_config, override, "simulation.rounds=20")
    with pytest.raises(ConfigError, match="resume=true is refused with privacy.mechanism=bandmf"):
        _settings(compose_config, "resume=true", "checkpoint=/tmp/none.pt")


@pytest.mark.slow
def test_a_banded_run_in_flowers_simulation_engine_trains_one_group_a_round_and_accounts_k_releases(compose_config,
                                                                                                    tmp_path):
    from tests.helpers import tiny_simulation

    metrics = tiny_simulation(compose_config, tmp_path, "privacy=bandmf", "simulation.rounds=4",
                              "privacy.target_epsilon=8", "privacy.delta=1e-3")
    user = metrics["privacy"]["user_level"]
    assert user["banded"]["bands"] == 2 and user["banded"]["max_participations"] == 2  # b = 1/q = 2
    assert [r["sampled"] for r in metrics["rounds"]] == [8, 8, 8, 8]  # one of two groups of the 16 users a round
    assert user["releases"] == 2 + user["evaluation_releases"]  # k = 2 rounds a device joins, and its evaluation
    z = banded_noise_multiplier(target_epsilon=8, delta=1e-3, rounds=4, bands=2, accountant="rdp",
                                evaluation=bool(user["evaluation_releases"]))
    assert user["noise_multiplier"] == z and user["epsilon"] <= 8.0
    assert [round(r["epsilon"], 9) for r in metrics["rounds"]][::2] == [round(r["epsilon"], 9) for r in metrics["rounds"]][1::2]


def test_an_unreachable_banded_target_is_refused_before_anything_starts_by_its_own_unamplified_accounting(
        compose_config):
    """Under bandmf the floor is k unamplified releases (1 here: 4 rounds, 4 bands), not R amplified ones."""
    from server.preflight import check_can_start

    settings = _settings(compose_config, "simulation.rounds=4", "privacy.bands=4", "privacy.target_epsilon=1e-9")
    with pytest.raises(ConfigError, match=r"over 1 releases at q=1.0"):
        check_can_start(settings)
