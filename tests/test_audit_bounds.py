"""``privacy.audit_bounds``: Clopper-Pearson limits against scipy, and the epsilon a fixed test proves against
mechanisms whose exact privacy is known (randomised response, the Gaussian mechanism)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binomtest, norm

from privacy.audit_bounds import (
    clopper_pearson,
    epsilon_lower_bound,
    epsilon_lower_bounds,
    lower_confidence,
    upper_confidence,
)

# ------------------------------------------------------------------------------------------ Clopper-Pearson

@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (0, 1), (17, 50), (50, 50)])
@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_clopper_pearson_matches_scipys_exact_interval(k, n, alpha):
    ci = binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="exact")
    assert clopper_pearson(k, n, alpha) == pytest.approx((ci.low, ci.high), abs=1e-12)


@pytest.mark.parametrize("k,n", [(0, 10), (4, 10), (10, 10), (1, 3000), (2999, 3000)])
def test_one_sided_limits_match_scipys_one_sided_exact_intervals(k, n):
    level = 0.01
    above = binomtest(k, n, alternative="greater").proportion_ci(confidence_level=1 - level, method="exact")
    below = binomtest(k, n, alternative="less").proportion_ci(confidence_level=1 - level, method="exact")
    assert lower_confidence(k, n, level) == pytest.approx(above.low, abs=1e-12)
    assert upper_confidence(k, n, level) == pytest.approx(below.high, abs=1e-12)


def test_clopper_pearson_at_the_ends_has_its_closed_form():
    assert clopper_pearson(0, 20, 0.1) == pytest.approx((0.0, 1 - 0.05 ** (1 / 20)))
    assert clopper_pearson(20, 20, 0.1) == pytest.approx((0.05 ** (1 / 20), 1.0))


@pytest.mark.parametrize("k,n", [(-1, 10), (11, 10), (0, 0)])
def test_impossible_counts_are_refused_with_the_rule(k, n):
    with pytest.raises(ValueError, match="0 <= successes <= trials"):
        clopper_pearson(k, n, 0.05)


# --------------------------------------------------------------------------------------- the epsilon a test proves

def test_a_perfect_test_proves_the_clopper_pearson_limit_in_closed_form():
    """Fires on all n trials of its world and none of the other's: P_a_low = (alpha/2)^(1/n) = 1 - P_b_high."""
    n, delta, alpha = 500, 1e-5, 0.05
    p = (alpha / 2) ** (1 / n)
    bound = epsilon_lower_bound(hits=n, trials=n, false_hits=0, false_trials=n, delta=delta, alpha=alpha)
    assert bound == pytest.approx(math.log((p - delta) / (1 - p)), rel=1e-12)


def test_the_bound_is_the_log_ratio_of_scipys_one_sided_limits():
    hits, trials, false_hits, false_trials, delta, alpha = 300, 1000, 40, 1200, 1e-3, 0.05
    low = binomtest(hits, trials, alternative="greater").proportion_ci(1 - alpha / 2, method="exact").low
    high = binomtest(false_hits, false_trials, alternative="less").proportion_ci(1 - alpha / 2, method="exact").high
    bound = epsilon_lower_bound(hits=hits, trials=trials, false_hits=false_hits, false_trials=false_trials,
                                delta=delta, alpha=alpha)
    assert bound == pytest.approx(math.log((low - delta) / high), rel=1e-10)


@pytest.mark.parametrize("hits,false_hits", [(0, 0), (100, 100), (50, 400), (1000, 1000), (3, 0)])
def test_a_test_that_does_not_fire_more_in_its_world_proves_nothing(hits, false_hits):
    """Equal rates, a test pointing the wrong way, and too few hits to clear delta all prove 0."""
    assert epsilon_lower_bound(hits=hits, trials=1000, false_hits=false_hits, false_trials=1000, delta=0.01,
                               alpha=0.05) == 0.0


def test_the_vectorised_bounds_equal_the_scalar_bound():
    rng = np.random.default_rng(0)
    hits, false_hits = rng.integers(0, 801, 300), rng.integers(0, 601, 300)
    hits[:3], false_hits[:3] = (0, 800, 800), (0, 0, 600)  # the ends
    many = epsilon_lower_bounds(hits, 800, false_hits, 600, delta=1e-4, alpha=0.05)
    one = [epsilon_lower_bound(hits=int(h), trials=800, false_hits=int(f), false_trials=600, delta=1e-4, alpha=0.05)
           for h, f in zip(hits, false_hits)]
    assert many == pytest.approx(one, abs=1e-12)


@pytest.mark.parametrize("epsilon,delta", [(1.0, 0.0), (3.0, 0.0), (2.0, 0.02)])
def test_the_bound_exceeds_the_true_epsilon_at_most_alpha_of_the_time(epsilon, delta):
    """The extremal (eps, delta)-DP mechanism (with probability delta it reveals the world, else eps-randomised
    response) meets P_in(E) = e^eps P_out(E) + delta with equality, so the bound sits right at the truth: over
    4,000 audits of 2,000 trials per world it may exceed eps in at most alpha of them (plus 3 standard errors)."""
    alpha, n, audits = 0.1, 2000, 4000
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    rng = np.random.default_rng(1)
    hits = rng.binomial(n, delta + (1 - delta) * p, audits)
    false_hits = rng.binomial(n, (1 - delta) * (1 - p), audits)
    bounds = epsilon_lower_bounds(hits, n, false_hits, n, delta=delta, alpha=alpha)
    assert np.mean(bounds > epsilon) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / audits)
    assert np.median(bounds) > 0.8 * epsilon  # and it is near the truth, not trivially small


def test_the_bound_stays_below_the_gaussian_mechanisms_exact_epsilon_and_nears_it():
    """A threshold test on a mu-GDP mechanism's output, N(mu, 1) against N(0, 1), with the expected counts of
    10^7 trials: its bound is below the exact epsilon at delta (Dong, Roth & Su 2022, Cor. 2.13:
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2); 4.38 at mu = 1) at every threshold, and the best
    threshold comes within 15 % of it (the rest is the false-positive rate's resolution, about 1 / trials)."""
    mu, delta, n = 1.0, 1e-5, 10 ** 7
    exact = brentq(lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0, 50)
    thresholds = np.linspace(-2.0, 8.0, 201)
    hits = np.rint(n * norm.sf(thresholds - mu)).astype(int)
    false_hits = np.rint(n * norm.sf(thresholds)).astype(int)
    bounds = epsilon_lower_bounds(hits, n, false_hits, n, delta=delta, alpha=0.05)
    assert bounds.max() <= exact
    assert bounds.max() >= 0.85 * exact


@pytest.mark.parametrize("delta,alpha", [(-0.1, 0.05), (1.0, 0.05), (1e-5, 0.0), (1e-5, 1.0)])
def test_a_delta_or_alpha_out_of_range_is_refused_with_the_rule(delta, alpha):
    with pytest.raises(ValueError, match=r"delta must be in \[0, 1\) and alpha in \(0, 1\)"):
        epsilon_lower_bound(hits=1, trials=2, false_hits=0, false_trials=2, delta=delta, alpha=alpha)
