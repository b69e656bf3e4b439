"""The audit's statistics (``privacy.audit_bounds``) against independent references and hand-computed cases."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binomtest, mannwhitneyu, norm

from privacy.audit_bounds import clopper_pearson, epsilon_lower_bound, roc_auc

# ------------------------------------------------------------------------------------------------------ the AUC


def test_auc_of_separable_scores_is_one_and_of_identical_scores_one_half():
    assert roc_auc([5.0, 6.0, 7.0], [1.0, 2.0]) == 1.0
    assert roc_auc([3.0] * 4, [3.0] * 6) == 0.5


def test_auc_counts_pairs_an_in_score_wins_with_ties_as_half():
    assert roc_auc([3, 4], [1, 2]) == 1.0 and roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1], [1]) == 0.5 and roc_auc([1, 3], [2]) == 0.5 and roc_auc([2, 2], [1, 2]) == 0.75


def test_auc_matches_scipy_mann_whitney_u():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.integers(0, 6, 30).astype(float)  # many ties
    assert roc_auc(a, b) == pytest.approx(mannwhitneyu(a, b).statistic / (len(a) * len(b)), rel=1e-12)


def test_auc_of_an_empty_world_is_refused():
    with pytest.raises(ValueError, match="at least one score in each world"):
        roc_auc([], [1.0])


# ------------------------------------------------------------------------------------------ Clopper-Pearson

@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (0, 1), (17, 50), (50, 50)])
@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_clopper_pearson_matches_scipys_exact_interval(k, n, alpha):
    ci = binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="exact")
    assert clopper_pearson(k, n, alpha) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_clopper_pearson_at_the_ends_has_its_closed_form():
    assert clopper_pearson(0, 20, 0.1) == pytest.approx((0.0, 1 - 0.05 ** (1 / 20)))
    assert clopper_pearson(20, 20, 0.1) == pytest.approx((0.05 ** (1 / 20), 1.0))


@pytest.mark.parametrize("k,n", [(-1, 10), (11, 10), (0, 0)])
def test_clopper_pearson_refuses_impossible_counts(k, n):
    with pytest.raises(ValueError, match="0 <= successes <= trials"):
        clopper_pearson(k, n, 0.05)


# --------------------------------------------------------------------------------------- the epsilon lower bound

def test_perfectly_separated_worlds_prove_the_clopper_pearson_limit():
    """50 v 50, every "in" score above every "out": 100 thresholds share alpha, so each one-sided bound is at
    alpha/200, and the best threshold has TPR_lo = (alpha/200)^(1/50) = 1 - FPR_hi."""
    delta, alpha = 1e-5, 0.05
    bound = epsilon_lower_bound(np.arange(50) + 100.0, np.arange(50.0), delta=delta, alpha=alpha)
    p = (alpha / 200) ** (1 / 50)
    assert bound.epsilon == pytest.approx(math.log((p - delta) / (1 - p)), rel=1e-9)
    assert (bound.tpr, bound.fpr, bound.threshold) == (1.0, 0.0, 100.0)


def test_one_trial_per_world_matches_the_hand_computed_bound():
    """In 1, out 0: thresholds {0, 1}, so each of the 4 one-sided bounds is at level alpha/4 = 0.25. At t = 1,
    TPR_lo = 0.25 (one success in one trial: the lower bound is the level itself) and FPR_hi = 0.75, so
    TPR <= e^eps FPR + delta gives eps >= log((0.25 - delta) / 0.75), which is negative; the TNR side is the
    same. Nothing is proved at alpha = 1; at alpha = 0.05, TPR_lo = 0.0125 and FPR_hi = 0.9875: still nothing."""
    assert epsilon_lower_bound([1.0], [0.0], delta=1e-5, alpha=1.0).epsilon == 0.0
    assert epsilon_lower_bound([1.0], [0.0], delta=1e-5, alpha=0.05).epsilon == 0.0


def test_twenty_separated_trials_per_world_match_the_hand_computed_bound():
    """20 v 20, separated: 40 thresholds, level = 0.05 / 80. At t = the lowest "in" score all 20 "in" trials
    pass, so TPR_lo = level^(1/20), and no "out" trial does, so FPR_hi = 1 - level^(1/20)."""
    level = 0.05 / 80
    p = level ** (1 / 20)  # 0.69150...
    expected = math.log((p - 1e-5) / (1 - p))  # 0.80714...
    bound = epsilon_lower_bound(np.arange(20.0) + 20, np.arange(20.0), delta=1e-5, alpha=0.05)
    assert expected == pytest.approx(0.80714, abs=1e-5)
    assert bound.epsilon == pytest.approx(expected, rel=1e-12)


def test_known_rates_give_the_bound_computed_from_scipys_intervals():
    scores_in = [1.0] * 40 + [0.0] * 10  # TPR 0.8 at threshold 1
    scores_out = [1.0] * 10 + [0.0] * 40  # FPR 0.2
    delta, alpha = 1e-5, 0.05
    level = alpha / (2 * 2)  # two thresholds, two one-sided bounds each
    tpr_lo = binomtest(40, 50).proportion_ci(confidence_level=1 - 2 * level, method="exact").low
    fpr_hi = binomtest(10, 50).proportion_ci(confidence_level=1 - 2 * level, method="exact").high
    expected = max(math.log((tpr_lo - delta) / fpr_hi), math.log((1 - fpr_hi - delta) / (1 - tpr_lo)))
    assert epsilon_lower_bound(scores_in, scores_out, delta=delta, alpha=alpha).epsilon == pytest.approx(expected)


@pytest.mark.parametrize("scores_in,scores_out", [
    (np.zeros(30), np.zeros(30)),  # the worlds look the same: TPR = FPR
    (np.arange(30.0), np.arange(30.0) + 100),  # the attack ranks them backwards: it proves nothing
])
def test_an_attack_that_does_not_separate_the_worlds_proves_nothing(scores_in, scores_out):
    assert epsilon_lower_bound(scores_in, scores_out, delta=1e-5).epsilon == 0.0


def test_the_bound_grows_with_the_separation_of_the_worlds():
    rng = np.random.default_rng(2)
    base_in, out = rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    bounds = [epsilon_lower_bound(base_in + shift, out, delta=1e-5).epsilon for shift in (0.0, 1.0, 2.0, 4.0)]
    assert bounds[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(bounds))


def test_the_bound_stays_below_the_true_epsilon_of_a_gaussian_mechanism():
    """Scores N(mu, 1) in, N(0, 1) out are the outputs of a mu-GDP mechanism, whose exact (eps, delta) curve is
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Dong, Roth & Su 2022, Cor. 2.13)."""
    mu, delta = 1.5, 1e-5
    true_eps = brentq(lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0, 50)
    rng = np.random.default_rng(1)
    bound = epsilon_lower_bound(rng.normal(mu, 1, 2000), rng.normal(0, 1, 2000), delta=delta)
    assert 0.5 < bound.epsilon < true_eps
