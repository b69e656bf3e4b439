"""The exact discrete Gaussian sampler: its draws follow N_Z(0, sigma^2), come from OS entropy, and are int64.

Statistical checks use a p-value threshold of 1e-4 or 5 standard errors, so a correct sampler fails them rarely;
the chi-square test is also shown to reject draws of a variance 10% off, so it can fail.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy import stats

from privacy.discrete_gaussian import bernoulli_exp, discrete_gaussian_pmf, sample_discrete_gaussian

DRAWS = 200_000
MIN_P_VALUE = 1e-4


def _chi_square_p(draws: np.ndarray, variance: float) -> float:
    """p-value of draws against N_Z(0, variance): one bin per integer with expected count >= 5, the tails beyond
    them added to the outermost bins."""
    reach = math.ceil(12 * math.sqrt(variance) + 10)
    support = np.arange(-reach, reach + 1)
    expected = draws.size * discrete_gaussian_pmf(variance, support)
    edge = int(support[expected >= 5].max())
    inner = np.abs(support) <= edge
    binned = expected[inner]
    binned[0] += expected[support < -edge].sum()
    binned[-1] += expected[support > edge].sum()
    observed = np.bincount(np.clip(draws, -edge, edge) + edge, minlength=2 * edge + 1)
    return float(stats.chisquare(observed, binned * (draws.size / binned.sum())).pvalue)


@pytest.mark.parametrize("variance", [1, 4, 50])
def test_empirical_pmf_matches_discrete_gaussian(variance: int) -> None:
    draws = sample_discrete_gaussian(variance, DRAWS)
    assert _chi_square_p(draws, variance) > MIN_P_VALUE
    assert _chi_square_p(draws, 1.1 * variance) < MIN_P_VALUE  # the test tells a 10% error in variance apart


def test_mean_and_variance_at_large_variance() -> None:
    variance = 10_000
    draws = sample_discrete_gaussian(variance, DRAWS).astype(np.float64)
    assert abs(draws.mean()) <= 5 * math.sqrt(variance / DRAWS)
    assert abs(draws.var() / variance - 1) <= 0.03


def test_draws_are_int64() -> None:
    draws = sample_discrete_gaussian(4096, 1000)
    assert draws.dtype == np.int64 and draws.shape == (1000,)


@pytest.mark.parametrize("bad", [0, -1, 2**24 + 1, 2.5])
def test_bad_variance_is_refused(bad: float) -> None:
    rule = rf"variance must be an integer in \[1, 2\*\*24\]; found {re.escape(repr(bad))}"
    with pytest.raises(ValueError, match=rule):
        sample_discrete_gaussian(bad, 10)  # type: ignore[arg-type]


def test_two_calls_differ() -> None:
    assert not np.array_equal(sample_discrete_gaussian(10_000, 1000), sample_discrete_gaussian(10_000, 1000))


@pytest.mark.parametrize(("num", "den"), [(0, 1), (3, 10), (1, 1), (27, 10), (3 * 2**46, 10 * 2**46)])
def test_bernoulli_exp_rate(num: int, den: int) -> None:
    rate = math.exp(-num / den)
    hits = bernoulli_exp(np.full(DRAWS, num), np.full(DRAWS, den))
    assert hits.dtype == bool
    assert abs(hits.mean() - rate) <= 5 * math.sqrt(rate * (1 - rate) / DRAWS)
