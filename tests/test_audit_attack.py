"""``privacy.audit_attack``: the canary score against the likelihood ratio computed from scipy's densities, the
test it allows against the Gaussian mechanism's exact tradeoff, the fit on simulated releases, and the choice of
test against a brute-force search."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from privacy.audit_attack import (
    MembershipTest,
    ReleaseModel,
    choose_test,
    fit_release_model,
    log_likelihood_ratio,
)
from privacy.audit_bounds import epsilon_lower_bound


def _rounds(rng: np.random.Generator, canaries: int, model: ReleaseModel, rounds: int, included: bool) -> np.ndarray:
    sampled = (rng.random((canaries, rounds)) < model.sample_rate) & included
    return model.shift * sampled + model.noise * rng.standard_normal((canaries, rounds))


@pytest.mark.parametrize("q", [0.1, 0.5, 1.0])
def test_the_score_is_the_log_likelihood_ratio_of_the_subsampled_gaussian(q):
    """log prod_t [(1 - q) phi(y_t) + q phi(y_t - shift)] / prod_t phi(y_t), with scipy's normal densities."""
    model = ReleaseModel(shift=1.3, noise=0.8, sample_rate=q)
    y = np.random.default_rng(0).normal(0.5, 1.5, (20, 7))
    p_in = np.prod((1 - q) * norm.pdf(y, 0, 0.8) + q * norm.pdf(y, 1.3, 0.8), axis=1)
    p_out = np.prod(norm.pdf(y, 0, 0.8), axis=1)
    assert log_likelihood_ratio(y, model) == pytest.approx(np.log(p_in / p_out), rel=1e-9)


def test_the_score_stays_finite_far_in_the_tails():
    model = ReleaseModel(shift=1.0, noise=0.1, sample_rate=0.1)
    scores = log_likelihood_ratio(np.array([[50.0, -50.0], [-50.0, -50.0]]), model)
    assert np.all(np.isfinite(scores)) and scores[0] > 1000 > 0 > scores[1]


def test_the_likelihood_ratio_test_meets_the_gaussian_mechanisms_exact_tradeoff():
    """Sampled in every one of 4 rounds (q = 1), the canary is a Gaussian mechanism with mu = sqrt(4) shift /
    noise, whose most powerful test at false-positive rate a has power 1 - G_mu(a), G_mu(a) =
    Phi(Phi^-1(1 - a) - mu) (Dong, Roth & Su 2022, Def. 2.7). The score's threshold test reaches it, within
    sampling error: no test does better."""
    model, rounds, n = ReleaseModel(shift=0.5, noise=0.5, sample_rate=1.0), 4, 200_000
    mu = math.sqrt(rounds) * model.shift / model.noise
    rng = np.random.default_rng(1)
    s_in = log_likelihood_ratio(_rounds(rng, n, model, rounds, True), model)
    s_out = log_likelihood_ratio(_rounds(rng, n, model, rounds, False), model)
    for fpr in (0.1, 0.01, 0.001):
        threshold = np.quantile(s_out, 1 - fpr)
        power = np.mean(s_in > threshold)
        exact = 1 - norm.cdf(norm.ppf(1 - fpr) - mu)
        assert power == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / n) + 0.01)


def test_fitting_recovers_the_shift_and_the_noise_of_simulated_releases():
    truth = ReleaseModel(shift=4.0, noise=0.7, sample_rate=0.1)
    rng = np.random.default_rng(2)
    fitted = fit_release_model(_rounds(rng, 20_000, truth, 30, True), _rounds(rng, 20_000, truth, 30, False),
                               sample_rate=0.1)
    assert fitted.noise == pytest.approx(0.7, rel=0.01)
    assert fitted.shift == pytest.approx(4.0, rel=0.02)


def test_without_visible_signal_the_fit_keeps_a_small_positive_shift():
    rng = np.random.default_rng(3)
    noise_only = ReleaseModel(shift=1.0, noise=1.0, sample_rate=0.1)
    fitted = fit_release_model(_rounds(rng, 50, noise_only, 3, False) - 1.0, _rounds(rng, 50, noise_only, 3, False),
                               sample_rate=0.1)
    assert fitted.shift == pytest.approx(1e-3 * fitted.noise)


def test_fitting_refuses_an_empty_world_or_a_release_without_noise():
    with pytest.raises(ValueError, match="fitting needs canaries of both worlds; found 0 in and 3 out"):
        fit_release_model(np.zeros((0, 5)), np.ones((3, 5)), sample_rate=0.1)
    with pytest.raises(ValueError, match="the noise multiplier must be > 0"):
        fit_release_model(np.ones((3, 5)), np.zeros((3, 5)), sample_rate=0.1)


@pytest.mark.parametrize("shift,noise,q", [(0.0, 1.0, 0.1), (1.0, 0.0, 0.1), (1.0, 1.0, 0.0), (1.0, 1.0, 1.5)])
def test_a_release_model_out_of_range_is_refused_with_the_rule(shift, noise, q):
    with pytest.raises(ValueError, match="shift > 0, noise > 0 and 0 < sample_rate <= 1"):
        ReleaseModel(shift=shift, noise=noise, sample_rate=q)


def _brute_force_best(s_in: np.ndarray, s_out: np.ndarray, delta: float, alpha: float) -> float:
    best = 0.0
    for t in np.unique(np.concatenate([s_in, s_out])):
        for test in (MembershipTest(t, True), MembershipTest(t, False)):
            aimed, other = (s_in, s_out) if test.in_above else (s_out, s_in)
            best = max(best, epsilon_lower_bound(hits=int(test.fires(aimed).sum()), trials=aimed.size,
                                                 false_hits=int(test.fires(other).sum()), false_trials=other.size,
                                                 delta=delta, alpha=alpha))
    return best


@pytest.mark.parametrize("telling", ["high in-scores", "low out-scores"])
def test_the_chosen_test_is_the_best_of_every_threshold_and_direction(telling):
    """In-scores well above the out-scores make the best test point at "in" above a threshold; in-scores that
    never go low while out-scores spread both ways make it point at "out" below one."""
    rng = np.random.default_rng(4)
    if telling == "high in-scores":
        s_in, s_out = rng.normal(3.0, 1.0, 300), rng.normal(0.0, 1.0, 300)
    else:
        s_in, s_out = rng.uniform(0.0, 1.0, 300), rng.normal(0.5, 2.0, 300)
    test = choose_test(s_in, s_out, delta=1e-5, alpha=0.05)
    aimed, other = (s_in, s_out) if test.in_above else (s_out, s_in)
    chosen = epsilon_lower_bound(hits=int(test.fires(aimed).sum()), trials=aimed.size,
                                 false_hits=int(test.fires(other).sum()), false_trials=other.size, delta=1e-5,
                                 alpha=0.05)
    assert test.in_above == (telling == "high in-scores")
    assert chosen == pytest.approx(_brute_force_best(s_in, s_out, 1e-5, 0.05), abs=1e-12) and chosen > 1.0


def test_choosing_a_test_refuses_an_empty_world():
    with pytest.raises(ValueError, match="choosing a test needs canaries of both worlds; found 2 in and 0 out"):
        choose_test(np.ones(2), np.ones(0), delta=1e-5, alpha=0.05)
