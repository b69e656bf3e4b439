"""Steinke, Nasr & Jagielski 2023 ("Privacy Auditing with One (1) Training Run"): epsilon from correct guesses.

m canaries are each included independently with probability 1/2; after one run the adversary guesses the
membership of r of them (abstaining on the rest) and v guesses are right. Their main theorem: if the mechanism is
(eps, delta)-DP with respect to each canary, then

    P[W >= v] <= P[Binomial(r, p) >= v] + 2 m delta * max_{1 <= i <= v} P[v - i <= Binomial(r, p) < v] / i,

with p = e^eps / (1 + e^eps), the accuracy of eps-randomised response. It needs nothing but DP itself: not the
canaries' independence, nor how the guesses were chosen from the output. Its price is the 2 m delta term, which
grows with the canaries, and a binomial that only reaches large eps with many guesses that are almost all right.
Framework-free: numpy and scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import binom

EPSILON_STEP = 0.01
"""The lower bound is the last multiple of this step below which every epsilon is rejected (rounded down)."""

EPSILON_LIMIT = 100.0
"""The largest epsilon the scan tries."""

_CHUNK = 64  # epsilons whose p-values are computed at once


def _check(canaries: int, guesses: int, correct: int, delta: float) -> None:
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries; found correct {correct}, guesses {guesses}, "
                         f"canaries {canaries}.")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1]; found {delta}.")


def _p_values(canaries: int, guesses: int, correct: int, epsilons: np.ndarray, delta: float) -> np.ndarray:
    """The theorem's right-hand side at each of ``epsilons`` (vectorised over them)."""
    p = expit(np.asarray(epsilons, dtype=float))[:, None]
    tail = binom.sf(correct - 1, guesses, p[:, 0])
    if correct == 0 or delta == 0.0:
        return np.minimum(1.0, tail)
    just_below = binom.pmf(np.arange(correct - 1, -1, -1)[None, :], guesses, p)  # P[B = v - 1], ..., P[B = 0]
    window = np.cumsum(just_below, axis=1) / np.arange(1, correct + 1)  # P[v - i <= B < v] / i for i = 1..v
    return np.minimum(1.0, tail + 2.0 * canaries * delta * window.max(axis=1))


def one_run_p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """The largest probability of at least ``correct`` right guesses that an (epsilon, delta)-DP mechanism allows.

    Raises:
        ValueError: if the counts are impossible, epsilon < 0 or delta outside [0, 1].
    """
    _check(canaries, guesses, correct, delta)
    if not epsilon >= 0.0:
        raise ValueError(f"epsilon must be >= 0; found {epsilon}.")
    return float(_p_values(canaries, guesses, correct, np.array([epsilon]), delta)[0])


def one_run_epsilon_lower_bound(*, canaries: int, guesses: int, correct: int, delta: float, alpha: float) -> float:
    """The epsilon that ``correct`` of ``guesses`` right guesses prove with confidence 1 - alpha.

    Every epsilon on the grid 0, step, 2 step, ... up to the first one whose p-value exceeds alpha is rejected; the
    last rejected one is returned (0 when even epsilon = 0 is not rejected). Scanning from 0 upwards, rather than
    bisecting, keeps the bound valid even where the p-value is not monotone in epsilon.

    Raises:
        ValueError: if the counts are impossible, delta outside [0, 1] or alpha outside (0, 1).
    """
    _check(canaries, guesses, correct, delta)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); found {alpha}.")
    grid = np.arange(int(round(EPSILON_LIMIT / EPSILON_STEP)) + 1) * EPSILON_STEP
    for start in range(0, grid.size, _CHUNK):
        kept = _p_values(canaries, guesses, correct, grid[start:start + _CHUNK], delta) > alpha
        if kept.any():
            first = start + int(np.argmax(kept))
            return float(grid[first - 1]) if first > 0 else 0.0
    return float(grid[-1])


@dataclass(frozen=True)
class OneRunBound:
    """Steinke et al.'s bound and the guesses behind it: ``correct`` of ``guesses`` right among ``canaries``."""

    epsilon: float
    canaries: int
    guesses: int
    correct: int


def top_guesses_epsilon_lower_bound(scores: np.ndarray, included: np.ndarray, *, delta: float,
                                    alpha: float) -> OneRunBound:
    """Guess "in" for the k highest-scoring canaries, abstain on the rest, for every k = 1, 2, 4, ... up to all.

    The grid of k is fixed in advance and each k's bound is taken at alpha / (number of k), so returning the best
    one keeps confidence 1 - alpha (Bonferroni).

    Args:
        scores: one score per canary (higher: more likely in); computed from the run's output alone.
        included: whether each canary was in (the coins, used only to count the right guesses).

    Raises:
        ValueError: if there is no canary or the two arrays differ in length.
    """
    scores, included = np.asarray(scores, dtype=float), np.asarray(included, dtype=bool)
    if scores.size == 0 or scores.shape != included.shape:
        raise ValueError(f"need one coin per score and at least one canary; found {scores.size} scores and "
                         f"{included.size} coins.")
    ranked = included[np.argsort(-scores, kind="stable")]
    grid = [2 ** j for j in range(int(np.log2(scores.size)) + 1)]
    best = OneRunBound(0.0, scores.size, 0, 0)
    for k in grid:
        correct = int(ranked[:k].sum())
        epsilon = one_run_epsilon_lower_bound(canaries=scores.size, guesses=k, correct=correct, delta=delta,
                                              alpha=alpha / len(grid))
        if epsilon > best.epsilon:
            best = OneRunBound(epsilon, scores.size, k, correct)
    return best
