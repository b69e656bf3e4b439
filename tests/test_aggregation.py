"""The server's aggregation: the user-level mechanism's bounds, noise and statistics, and the strategies' steps."""

import math

import numpy as np
import pytest

from privacy.contribution import (
    LOSS_BOUND,
    STATISTIC_WEIGHT,
    DeviceStatistics,
    contribution_sensitivity,
    encode_statistics,
)
from privacy.user_level import NoUserLevelPrivacy
from server.aggregation import aggregate, make_strategy
from server.replies import Contribution
from server.settings import StrategySettings
from tests.helpers import gaussian_mechanism

CURRENT = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
PLAIN = StrategySettings(server_lr=1.0, momentum=0.0)  # FedAvg's step is the mean update itself


def _update(node, value, *, clipping_norm=None, unclipped=True, loss=1.0):
    arrays = {k: np.full_like(v, value) for k, v in CURRENT.items()}
    statistics = encode_statistics(DeviceStatistics(True, unclipped, loss), clipping_norm)
    return Contribution(node, arrays, statistics)


def test_user_level_mean_clips_each_update_and_divides_by_the_expected_count(flower_task_identity):
    updates = [_update(1, 1.0, clipping_norm=1.0, unclipped=False), _update(2, 0.01, clipping_norm=1.0)]
    dp = gaussian_mechanism(clipping_norm=1.0, noise_multiplier=0.0, expected_clients=4)
    new, released = aggregate(make_strategy(PLAIN), 1, CURRENT, updates, mechanism=dp)
    expected = (1.0 / np.sqrt(8) + 0.01) / 4.0  # norms sqrt(8) (clipped to 1) and 0.0283 (kept)
    assert np.allclose(new["w"], expected) and np.allclose(new["b"], expected)
    assert released.participants == pytest.approx(2.0) and released.unclipped_fraction == pytest.approx(0.5)
    assert released.mean_loss == pytest.approx(1.0, rel=1e-6) and released.noisy


def test_user_level_noise_on_the_sum_has_std_z_s_over_expected_count(flower_task_identity):
    big = {"w": np.zeros((400, 500), dtype=np.float32)}
    dp = gaussian_mechanism(clipping_norm=2.0, noise_multiplier=1.5, expected_clients=10)
    new, _ = aggregate(make_strategy(PLAIN), 1, big, [], mechanism=dp)
    sensitivity = 2.0 * math.sqrt(1 + 3 * STATISTIC_WEIGHT**2)
    assert contribution_sensitivity(2.0) == pytest.approx(sensitivity)
    assert new["w"].std() == pytest.approx(1.5 * sensitivity / 10.0, rel=0.01)  # released even with no client


def test_the_statistics_noise_is_the_updates_read_at_the_statistics_weight(flower_task_identity):
    """Each released count carries N(0, (z·S/w)^2): one mechanism for the update and its statistics."""
    dp = gaussian_mechanism(clipping_norm=0.5, noise_multiplier=1.0, expected_clients=10)
    counts = [aggregate(make_strategy(PLAIN), 1, CURRENT, [], mechanism=dp)[1].participants for _ in range(3000)]
    expected = 1.0 * contribution_sensitivity(0.5) / (STATISTIC_WEIGHT * 0.5)
    assert np.std(counts) == pytest.approx(expected, rel=0.06) and abs(np.mean(counts)) < 0.6
    assert dp.ledger.steps == 3000  # each release recorded once, statistics included


def test_one_device_moves_the_whole_contribution_by_at_most_the_sensitivity(flower_task_identity):
    """Neighbouring rounds differ by one device's bounded contribution: its norm over update and statistics is at most
    S = C·sqrt(1 + 3β²), however large its update, loss or claims."""
    dp = gaussian_mechanism(clipping_norm=0.5, noise_multiplier=0.0, expected_clients=1)
    base, base_stats = aggregate(make_strategy(PLAIN), 1, CURRENT, [], mechanism=dp)
    extreme = Contribution(1, {k: np.full_like(v, 1e6) for k, v in CURRENT.items()},
                           np.array([9.0, 9.0, 9.0], dtype=np.float32))
    moved, moved_stats = aggregate(make_strategy(PLAIN), 1, CURRENT, [extreme], mechanism=dp)
    update_sq = sum(float(np.sum((moved[k] - base[k]) ** 2)) for k in CURRENT)
    stats_sq = sum((getattr(moved_stats, a) - getattr(base_stats, a)) ** 2
                   for a in ("participants", "unclipped")) + ((moved_stats.loss_sum - base_stats.loss_sum) / LOSS_BOUND) ** 2
    assert math.sqrt(update_sq + stats_sq * (STATISTIC_WEIGHT * 0.5) ** 2) == pytest.approx(contribution_sensitivity(0.5))


def test_plain_fedavg_counts_every_participant_once(flower_task_identity):
    """No device says how many examples it has: each participant's update weighs 1."""
    new, released = aggregate(make_strategy(PLAIN), 1, CURRENT, [_update(1, 1.0), _update(2, 0.0)],
                              mechanism=NoUserLevelPrivacy())
    assert np.allclose(new["w"], 0.5) and released.participants == 2.0 and not released.noisy


def test_fedmedian_ignores_an_outlier(flower_task_identity):
    updates = [_update(1, 0.1), _update(2, 0.2), _update(3, 1000.0)]
    new, _ = aggregate(make_strategy(StrategySettings(name="fedmedian")), 1, CURRENT, updates, mechanism=NoUserLevelPrivacy())
    assert np.allclose(new["w"], 0.2)


def test_fedadam_moves_towards_the_mean_update_and_keeps_moments(flower_task_identity):
    strategy = make_strategy(StrategySettings(name="fedadam", server_lr=0.1))
    new, _ = aggregate(strategy, 1, CURRENT, [_update(1, 1.0)], mechanism=NoUserLevelPrivacy())
    assert np.all(new["w"] > 0) and strategy.m_t is not None
