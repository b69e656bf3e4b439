"""What one membership test's counts prove about epsilon, with Clopper-Pearson confidence.

Every (epsilon, delta)-DP mechanism satisfies P_a(E) <= e^epsilon P_b(E) + delta for every event E of its output and
both orders (a, b) of two neighbouring inputs (Kairouz, Oh & Viswanath 2015, "The Composition Theorem for
Differential Privacy", Thm. 2.1). Counting how often a test's event occurs over independent trials of each world
and bounding both rates with exact binomial (Clopper & Pearson 1934) intervals gives the smallest epsilon any
mechanism with those rates could have (Jagielski, Ullman & Oprea 2020, "Auditing Differentially Private Machine
Learning"; Nasr et al. 2021, "Adversary Instantiation"): epsilon >= log((P_a_low - delta) / P_b_high).

The test must be fixed before its trials are counted (``privacy.audit_attack`` chooses it on a separate half of the
canaries), so no correction for choosing it is needed. Framework-free: numpy and scipy only.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import beta


def _check_counts(successes: int, trials: int) -> None:
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need trials >= 1 and 0 <= successes <= trials; found successes {successes}, "
                         f"trials {trials}.")


def lower_confidence(successes: int, trials: int, level: float) -> float:
    """One-sided Clopper-Pearson lower bound on a binomial proportion, wrong with probability at most ``level``."""
    _check_counts(successes, trials)
    return 0.0 if successes == 0 else float(beta.ppf(level, successes, trials - successes + 1))


def upper_confidence(successes: int, trials: int, level: float) -> float:
    """One-sided Clopper-Pearson upper bound on a binomial proportion, wrong with probability at most ``level``."""
    _check_counts(successes, trials)
    return 1.0 if successes == trials else float(beta.ppf(1.0 - level, successes + 1, trials - successes))


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided (1 - alpha) confidence interval of a binomial proportion (Clopper & Pearson 1934)."""
    return lower_confidence(successes, trials, alpha / 2), upper_confidence(successes, trials, alpha / 2)


def epsilon_lower_bound(*, hits: int, trials: int, false_hits: int, false_trials: int, delta: float,
                        alpha: float) -> float:
    """The epsilon one fixed test proves with confidence 1 - alpha (0 when it proves nothing).

    The test's event occurred ``hits`` times in ``trials`` independent trials of the world it points at (a) and
    ``false_hits`` times in ``false_trials`` of the other world (b). If the mechanism were (eps, delta)-DP,
    P_a <= e^eps P_b + delta, so eps >= log((P_a_low - delta) / P_b_high) with each one-sided bound at alpha / 2.

    Raises:
        ValueError: if delta is outside [0, 1), alpha outside (0, 1), or a count is impossible.
    """
    if not 0.0 <= delta < 1.0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"delta must be in [0, 1) and alpha in (0, 1); found delta {delta}, alpha {alpha}.")
    low = lower_confidence(hits, trials, alpha / 2) - delta
    high = upper_confidence(false_hits, false_trials, alpha / 2)
    return max(0.0, math.log(low / high)) if low > 0.0 else 0.0


def epsilon_lower_bounds(hits: np.ndarray, trials: int, false_hits: np.ndarray, false_trials: int, *,
                         delta: float, alpha: float) -> np.ndarray:
    """``epsilon_lower_bound`` for many candidate tests at once (vectorised; used to choose a test)."""
    hits, false_hits = np.asarray(hits), np.asarray(false_hits)
    low = np.where(hits == 0, 0.0, beta.ppf(alpha / 2, np.maximum(hits, 1), trials - hits + 1)) - delta
    high = np.where(false_hits == false_trials, 1.0,
                    beta.ppf(1.0 - alpha / 2, false_hits + 1, np.maximum(false_trials - false_hits, 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(low > 0.0, np.maximum(np.log(np.maximum(low, 1e-300) / high), 0.0), 0.0)
