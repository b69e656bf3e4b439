"""The empirical privacy audit: its statistics against independent references, its canary, and (slow) the audit.

The slow test plays the membership game of ``simulations.audit`` with a few trials per world: without DP the
loss-threshold attack must tell the canary's worlds apart, with user-level DP at epsilon 1 it must be near chance,
and the epsilon it proves must never exceed the accounted one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binomtest, mannwhitneyu, norm

from client.simulated_device import population
from model.event_log import load_events, write_events
from model.vocab import GENRES
from simulations.audit import (
    CANARY_BPM,
    CANARY_INSTRUMENT,
    AuditConfig,
    audit,
    build_setup,
    canary_events,
    clopper_pearson,
    epsilon_lower_bound,
    roc_auc,
    train_federated,
)

# --------------------------------------------------------------------------------------------- the statistics


def test_auc_counts_pairs_an_in_score_wins_with_ties_as_half():
    assert roc_auc([3, 4], [1, 2]) == 1.0 and roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1], [1]) == 0.5 and roc_auc([1, 3], [2]) == 0.5 and roc_auc([2, 2], [1, 2]) == 0.75


def test_auc_matches_scipy_mann_whitney_u():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.integers(0, 6, 30).astype(float)  # many ties
    assert roc_auc(a, b) == pytest.approx(mannwhitneyu(a, b).statistic / (len(a) * len(b)), rel=1e-12)


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (0, 1), (17, 50), (50, 50)])
@pytest.mark.parametrize("alpha", [0.05, 0.001])
def test_clopper_pearson_matches_scipys_exact_interval(k, n, alpha):
    ci = binomtest(k, n).proportion_ci(confidence_level=1 - alpha, method="exact")
    assert clopper_pearson(k, n, alpha) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_clopper_pearson_at_the_ends_has_its_closed_form():
    assert clopper_pearson(0, 20, 0.1) == pytest.approx((0.0, 1 - 0.05 ** (1 / 20)))
    assert clopper_pearson(20, 20, 0.1) == pytest.approx((0.05 ** (1 / 20), 1.0))


def test_perfectly_separated_worlds_prove_the_clopper_pearson_limit():
    """50 v 50, every "in" score above every "out": 100 thresholds share alpha, so each one-sided bound is at
    alpha/200, and the best threshold has TPR_lo = (alpha/200)^(1/50) = 1 - FPR_hi."""
    delta, alpha = 1e-5, 0.05
    bound = epsilon_lower_bound(np.arange(50) + 100.0, np.arange(50.0), delta=delta, alpha=alpha)
    p = (alpha / 200) ** (1 / 50)
    assert bound.epsilon == pytest.approx(math.log((p - delta) / (1 - p)), rel=1e-9)
    assert (bound.tpr, bound.fpr, bound.threshold) == (1.0, 0.0, 100.0)


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
    (np.zeros(30), np.zeros(30)),  # the worlds look the same
    (np.arange(30.0), np.arange(30.0) + 100),  # the attack ranks them backwards: it proves nothing
])
def test_an_attack_that_does_not_separate_the_worlds_proves_nothing(scores_in, scores_out):
    assert epsilon_lower_bound(scores_in, scores_out, delta=1e-5).epsilon == 0.0


def test_the_bound_stays_below_the_true_epsilon_of_a_gaussian_mechanism():
    """Scores N(mu, 1) in, N(0, 1) out are the outputs of a mu-GDP mechanism, whose exact (eps, delta) curve is
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Dong, Roth & Su 2022, Cor. 2.13)."""
    mu, delta = 1.5, 1e-5
    true_eps = brentq(lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta, 0, 50)
    rng = np.random.default_rng(1)
    bound = epsilon_lower_bound(rng.normal(mu, 1, 2000), rng.normal(0, 1, 2000), delta=delta)
    assert 0.5 < bound.epsilon < true_eps


# ------------------------------------------------------------------------------------------------- the canary

def test_the_canary_is_a_valid_log_whose_pattern_no_synthetic_user_shows(tmp_path):
    config = AuditConfig()
    setup = build_setup(config)
    events = canary_events(start_ts=1_788_739_200, days=config.days, rare_genre=setup.rare_genre,
                           decoy_genre=setup.decoy_genre)
    assert write_events(tmp_path / "canary.jsonl", events) == len(events)
    assert load_events(tmp_path / "canary.jsonl").events == events
    assert len(setup.canary) == config.days and set(setup.canary.targets.tolist()) == {GENRES.index(setup.rare_genre)}
    people = population(config.seed, config.num_users + config.eval_users, config.days)
    for uid in range(config.num_users + config.eval_users):
        for e in people.user(uid).events():
            assert not (e.kind == "segment_kept" and e.bpm == CANARY_BPM and e.instruments == (CANARY_INSTRUMENT,))
    assert setup.rare_genre != setup.decoy_genre


def test_the_two_worlds_differ_only_by_the_canary():
    """Trial k of both worlds draws the same sampling and seeds: when the canary's slot is not drawn, the released
    models are identical; when it is, they differ."""
    config = AuditConfig(num_users=3, eval_users=2, days=7, rounds=1, sample_rate=0.5, trials=2)
    setup = build_setup(config)
    drawn = {t: np.random.default_rng([config.seed, t, 0]).random(config.num_users + 1)[-1] < 0.5 for t in range(40)}
    for trial in (next(t for t, d in drawn.items() if not d), next(t for t, d in drawn.items() if d)):
        with_canary = train_federated(setup, with_canary=True, trial=trial, noise_multiplier=None)
        without = train_federated(setup, with_canary=False, trial=trial, noise_multiplier=None)
        same = all(np.array_equal(with_canary[k], without[k]) for k in with_canary)
        assert same == (not drawn[trial])


def test_an_audit_config_that_breaks_the_delta_rule_is_refused():
    with pytest.raises(ValueError, match="delta must be in"):
        AuditConfig(num_users=10, delta=0.1)


# ---------------------------------------------------------------------------------------------------- the audit

@pytest.fixture(scope="module")
def audits():
    """No DP and user-level DP at epsilon 1, 10 trained models per world each (about a minute on 2 cores)."""
    import torch

    torch.set_num_threads(1)
    setup = build_setup(AuditConfig(trials=10))
    return audit(setup, target_epsilon=None), audit(setup, target_epsilon=1.0)


@pytest.mark.slow
def test_without_dp_the_canary_is_detected_and_with_dp_at_epsilon_1_the_attack_is_near_chance(audits):
    no_dp, dp = audits
    assert no_dp.auc >= 0.9 and no_dp.auc > dp.auc
    assert abs(dp.auc - 0.5) <= 0.25  # 10 v 10 trials: the AUC's standard error under chance is about 0.13


@pytest.mark.slow
def test_the_epsilon_the_attack_proves_never_exceeds_the_accounted_epsilon(audits):
    _, dp = audits
    assert 0.9 <= dp.accounted_epsilon <= 1.0 and dp.noise_multiplier > 0
    assert dp.bound.epsilon <= dp.accounted_epsilon
