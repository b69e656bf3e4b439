"""``privacy.audit_one_run`` (Steinke, Nasr & Jagielski 2023): the p-value against exact binomial tails computed
from ``math.comb``, the bound against its closed form and its definition, and its validity on randomised response,
the mechanism that makes the theorem tight."""

from __future__ import annotations

import math

import numpy as np
import pytest

from privacy.audit_one_run import (
    EPSILON_STEP,
    one_run_epsilon_lower_bound,
    one_run_p_value,
    top_guesses_epsilon_lower_bound,
)


def _pmf(j: int, r: int, p: float) -> float:
    return math.comb(r, j) * p ** j * (1 - p) ** (r - j)


def _p_value_by_hand(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The theorem's right-hand side summed term by term: tail plus 2 m delta max_i P[v - i <= B < v] / i."""
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    tail = sum(_pmf(j, r, p) for j in range(v, r + 1))
    window = max((sum(_pmf(j, r, p) for j in range(v - i, v)) / i for i in range(1, v + 1)), default=0.0)
    return min(1.0, tail + 2 * m * delta * window)


@pytest.mark.parametrize("m,r,v,epsilon", [(100, 10, 10, 1.0), (1000, 60, 45, 0.5), (500, 200, 180, 2.0),
                                           (50, 7, 0, 1.0), (80, 40, 21, 0.0)])
@pytest.mark.parametrize("delta", [0.0, 1e-5, 1e-3])
def test_the_p_value_is_the_binomial_tail_plus_the_delta_term_computed_exactly(m, r, v, epsilon, delta):
    assert one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=epsilon, delta=delta) == pytest.approx(
        _p_value_by_hand(m, r, v, epsilon, delta), rel=1e-9, abs=1e-15)


def test_all_guesses_right_without_delta_prove_the_closed_form():
    """r right guesses of r at delta = 0: p-value p^r <= alpha up to eps = logit(alpha^(1/r)), rounded down."""
    r, alpha = 40, 0.05
    exact = math.log(alpha ** (1 / r) / (1 - alpha ** (1 / r)))
    bound = one_run_epsilon_lower_bound(canaries=1000, guesses=r, correct=r, delta=0.0, alpha=alpha)
    assert exact - EPSILON_STEP < bound <= exact


@pytest.mark.parametrize("m,r,v,delta", [(1000, 100, 90, 1e-5), (5000, 400, 330, 1e-5), (200, 30, 29, 1e-3)])
def test_the_bound_is_the_last_epsilon_the_p_value_rejects(m, r, v, delta):
    alpha = 0.05
    bound = one_run_epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, alpha=alpha)
    grid = np.arange(0.0, bound + EPSILON_STEP / 2, EPSILON_STEP)
    assert all(one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=e, delta=delta) <= alpha for e in grid)
    assert one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=bound + EPSILON_STEP, delta=delta) > alpha


def test_the_delta_term_costs_more_the_more_canaries_there_are():
    bounds = [one_run_epsilon_lower_bound(canaries=m, guesses=200, correct=195, delta=1e-5, alpha=0.05)
              for m in (200, 2000, 20_000, 200_000)]
    assert bounds == sorted(bounds, reverse=True) and bounds[0] > bounds[-1]


@pytest.mark.parametrize("epsilon", [0.5, 2.0])
def test_the_bound_exceeds_the_true_epsilon_at_most_alpha_of_the_time_on_randomised_response(epsilon):
    """eps-randomised response on every canary makes W exactly Binomial(r, e^eps / (1 + e^eps)): over 2,000
    one-run audits the bound may exceed eps in at most alpha of them (plus 3 standard errors), and it is close."""
    alpha, r, audits = 0.1, 300, 2000
    rng = np.random.default_rng(3)
    right = rng.binomial(r, math.exp(epsilon) / (1 + math.exp(epsilon)), audits)
    bounds = np.array([one_run_epsilon_lower_bound(canaries=r, guesses=r, correct=int(v), delta=0.0, alpha=alpha)
                       for v in right])
    assert np.mean(bounds > epsilon) <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / audits)
    assert np.median(bounds) > 0.6 * epsilon


def test_top_guesses_take_the_best_k_of_a_fixed_grid_at_alpha_over_its_size():
    """4,096 canaries; the 64 highest scores are all in, the rest a coin toss: the grid 1, 2, ..., 4096 has 13
    points, and the best is k = 64 at alpha / 13."""
    rng = np.random.default_rng(4)
    included = rng.random(4096) < 0.5
    scores = rng.random(4096)
    top = np.flatnonzero(included)[:64]
    scores[top] += 10.0
    result = top_guesses_epsilon_lower_bound(scores, included, delta=1e-5, alpha=0.05)
    assert (result.guesses, result.correct, result.canaries) == (64, 64, 4096)
    assert result.epsilon == one_run_epsilon_lower_bound(canaries=4096, guesses=64, correct=64, delta=1e-5,
                                                         alpha=0.05 / 13)


def test_scores_that_carry_nothing_prove_nothing():
    rng = np.random.default_rng(5)
    result = top_guesses_epsilon_lower_bound(rng.random(3000), rng.random(3000) < 0.5, delta=1e-5, alpha=0.05)
    assert result.epsilon == 0.0


@pytest.mark.parametrize("m,r,v", [(10, 11, 5), (10, 5, 6), (10, 5, -1)])
def test_impossible_counts_are_refused_with_the_rule(m, r, v):
    with pytest.raises(ValueError, match="0 <= correct <= guesses <= canaries"):
        one_run_p_value(canaries=m, guesses=r, correct=v, epsilon=1.0, delta=0.0)


def test_a_negative_epsilon_or_an_alpha_out_of_range_is_refused():
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        one_run_p_value(canaries=10, guesses=5, correct=5, epsilon=-1.0, delta=0.0)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        one_run_epsilon_lower_bound(canaries=10, guesses=5, correct=5, delta=0.0, alpha=1.5)
