"""What a membership attack's scores prove: its AUC, and an empirical lower bound on epsilon.

An attacker scores each released model (higher: "the canary was in"). Every (epsilon, delta)-DP mechanism satisfies
TPR <= e^epsilon * FPR + delta for every test (Kairouz, Oh & Viswanath 2015, "The Composition Theorem for
Differential Privacy", Thm. 2.1), so the rates of a threshold test, bounded with Clopper-Pearson intervals, give the
smallest epsilon any mechanism could have (Jagielski, Ullman & Oprea 2020, "Auditing Differentially Private Machine
Learning"). Framework-free: numpy and scipy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta


def roc_auc(scores_in: Sequence[float], scores_out: Sequence[float]) -> float:
    """P(score of a random "in" trial > score of a random "out" trial), ties counting one half (Mann-Whitney U)."""
    a, b = np.asarray(scores_in, dtype=float)[:, None], np.asarray(scores_out, dtype=float)[None, :]
    if a.size == 0 or b.size == 0:
        raise ValueError("roc_auc needs at least one score in each world.")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def _lower(successes: np.ndarray, trials: int, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson lower bounds at confidence 1 - level (0 where there is no success)."""
    k = np.asarray(successes)
    return np.where(k == 0, 0.0, beta.ppf(level, np.maximum(k, 1), trials - k + 1))


def _upper(successes: np.ndarray, trials: int, level: float) -> np.ndarray:
    """One-sided Clopper-Pearson upper bounds at confidence 1 - level (1 where every trial succeeded)."""
    k = np.asarray(successes)
    return np.where(k == trials, 1.0, beta.ppf(1 - level, k + 1, np.maximum(trials - k, 1)))


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) confidence interval of a binomial proportion (Clopper & Pearson 1934)."""
    if not 0 <= successes <= trials or trials < 1:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1; found {successes}, {trials}.")
    return float(_lower(successes, trials, alpha / 2)), float(_upper(successes, trials, alpha / 2))


@dataclass(frozen=True)
class EpsilonBound:
    """The best threshold's empirical lower bound on epsilon, and the rates it came from."""

    epsilon: float
    threshold: float
    tpr: float
    fpr: float


def epsilon_lower_bound(scores_in: Sequence[float], scores_out: Sequence[float], *, delta: float,
                        alpha: float = 0.05) -> EpsilonBound:
    """The largest epsilon that the threshold attack "in if score >= t" proves, with confidence 1 - alpha.

    An (epsilon, delta)-DP mechanism satisfies TPR <= e^eps FPR + delta and TNR <= e^eps FNR + delta for every test
    (Kairouz, Oh & Viswanath 2015, Thm. 2.1), so eps >= log((TPR_lo - delta) / FPR_hi) and
    eps >= log((TNR_lo - delta) / FNR_hi), with Clopper-Pearson bounds on the rates (TNR_lo = 1 - FPR_hi and
    FNR_hi = 1 - TPR_lo: two one-sided bounds per threshold). Every observed score is tried as the threshold and
    alpha is split over all these bounds (Bonferroni), so picking the best threshold on the same trials keeps the
    bound valid. Returns epsilon 0 when no threshold proves anything.
    """
    s_in, s_out = np.sort(np.asarray(scores_in, dtype=float)), np.sort(np.asarray(scores_out, dtype=float))
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("epsilon_lower_bound needs at least one score in each world.")
    thresholds = np.unique(np.concatenate([s_in, s_out]))
    tp = s_in.size - np.searchsorted(s_in, thresholds, side="left")  # scores >= t
    fp = s_out.size - np.searchsorted(s_out, thresholds, side="left")
    level = alpha / (2 * thresholds.size)
    tpr_lo, fpr_hi = _lower(tp, s_in.size, level), _upper(fp, s_out.size, level)
    best = EpsilonBound(0.0, math.inf, 0.0, 0.0)
    for num, den in ((tpr_lo - delta, fpr_hi), (1.0 - fpr_hi - delta, 1.0 - tpr_lo)):
        ok = (num > 0.0) & (den > 0.0)
        eps = np.full(thresholds.size, -np.inf)
        eps[ok] = np.log(num[ok] / den[ok])
        i = int(np.argmax(eps))
        if eps[i] > best.epsilon:
            best = EpsilonBound(float(eps[i]), float(thresholds[i]), float(tp[i] / s_in.size),
                                float(fp[i] / s_out.size))
    return best
