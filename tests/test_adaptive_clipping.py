"""Adaptive clipping (Andrew et al. 2021): the geometric rule, and the mechanism's C following a quantile of the update
norms from its own released (noisy) statistics."""

import math

import numpy as np
import pytest

from privacy.adaptive_clipping import AdaptiveClipping
from privacy.accounting import PrivacyLedger
from privacy.contribution import DeviceStatistics, encode_statistics
from privacy.errors import PrivacyConfigError
from privacy.randomness import SeededNoise
from privacy.user_level import UserLevelGaussian


def test_the_geometric_rule_moves_c_against_the_gap_to_the_target_quantile():
    rule = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2)
    assert rule.next_norm(1.0, 0.5) == 1.0
    assert rule.next_norm(1.0, 1.0) == pytest.approx(math.exp(-0.1))  # everything fits: shrink
    assert rule.next_norm(1.0, 0.0) == pytest.approx(math.exp(0.1))  # everything clipped: grow
    assert rule.next_norm(1.0, 7.0) == rule.next_norm(1.0, 1.0)  # a noisy share beyond [0, 1] is clamped


@pytest.mark.parametrize("quantile,rate", [(0.0, 0.2), (1.0, 0.2), (0.5, 0.0), (0.5, 11.0)])
def test_a_rule_outside_its_range_is_refused_naming_the_key(quantile, rate):
    with pytest.raises(PrivacyConfigError, match="privacy.clipping_"):
        AdaptiveClipping(quantile, rate)


@pytest.mark.parametrize("noise_multiplier", [0.0, 0.5])
def test_the_mechanisms_clipping_norm_follows_the_target_quantile_of_update_norms(noise_multiplier):
    """Updates with log-normal norms (median 0.2): starting from C = 2, after 60 releases C is near their median, read
    only from each round's released statistics (noisy for z = 0.5 over 400 devices)."""
    rng = np.random.default_rng(0)
    mechanism = UserLevelGaussian(clipping_norm=2.0, noise_multiplier=noise_multiplier, sample_rate=1.0, population=400,
                                  noise=SeededNoise([1]), ledger=PrivacyLedger(), delta=1e-4, accountant="rdp",
                                  adaptive=AdaptiveClipping(0.5, 0.2))
    current = {"w": np.zeros(16, dtype=np.float32)}
    for _ in range(60):
        accumulator = mechanism.open_round(current)
        for norm in 0.2 * np.exp(rng.normal(0.0, 0.5, size=400)):
            direction = rng.normal(size=16)
            update = {"w": (direction / np.linalg.norm(direction) * norm).astype(np.float32)}
            statistics = DeviceStatistics(True, norm <= mechanism.clipping_norm, 1.0)
            accumulator.add(update, encode_statistics(statistics, mechanism.clipping_norm))
        accumulator.release()
    assert mechanism.clipping_norm == pytest.approx(0.2, rel=0.15)
    assert mechanism.ledger.steps == 60  # adapting costs no release of its own
