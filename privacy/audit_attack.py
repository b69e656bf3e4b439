"""The canary adversary's side of the audit: its model of what it sees, its score, and the test it chooses.

A Dirac canary owns one coordinate of the released vector. With the other users known and subtracted, the
adversary reads in each round t, in units of the clipping norm C (the release times qN / C),
y_t = shift * b_t + noise_t, where b_t = 1 when the canary is in the population and was Poisson-sampled that round
(probability q) and noise_t ~ N(0, sigma^2); the mechanism as specified has shift 1 (a clipped canary) and
sigma = z. Between "in" (each round a q-mixture of N(shift, sigma^2) and N(0, sigma^2)) and "out" (N(0, sigma^2)
every round) the most powerful test (Neyman-Pearson) thresholds the log-likelihood ratio

    L(y) = sum_t log(1 - q + q * exp((shift * y_t - shift^2 / 2) / sigma^2)),

the privacy-loss variable of the pair the accountant analyses (the Poisson-subsampled Gaussian's dominating pair,
composed over the rounds: Mironov, Talwar & Zhang 2019; Zhu, Dong & Wang 2022), so no attack on this view does
better. The adversary does not take the claimed shift and sigma on trust: it fits them on tuning canaries
(an out-canary's coordinate is pure noise), so a mechanism that adds less noise or clips less than it claims is
scored by its own likelihood ratio, and it picks the threshold and direction that prove most on those canaries.
Framework-free: numpy only, plus ``privacy.audit_bounds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privacy.audit_bounds import epsilon_lower_bounds


@dataclass(frozen=True)
class ReleaseModel:
    """What one canary's coordinate of a round's release looks like to the adversary (in units of C).

    Attributes:
        shift: the canary's contribution when it is sampled (1 for a canary clipped to C).
        noise: the noise's standard deviation (the noise multiplier z for the mechanism as specified).
        sample_rate: q, each round's Poisson sampling rate.
    """

    shift: float
    noise: float
    sample_rate: float

    def __post_init__(self) -> None:
        if not (self.shift > 0.0 and self.noise > 0.0 and 0.0 < self.sample_rate <= 1.0):
            raise ValueError(f"a release model needs shift > 0, noise > 0 and 0 < sample_rate <= 1; found shift "
                             f"{self.shift}, noise {self.noise}, sample_rate {self.sample_rate}.")


def fit_release_model(rounds_in: np.ndarray, rounds_out: np.ndarray, *, sample_rate: float) -> ReleaseModel:
    """Fit the shift and the noise from canaries whose membership the adversary knows (the tuning half).

    Args:
        rounds_in: (canaries, rounds) coordinates of canaries that were in.
        rounds_out: (canaries, rounds) coordinates of canaries that were out: pure noise, mean 0.
        sample_rate: q, known to everyone.

    The noise is the root mean square of the out-canaries' coordinates; the shift is the difference of the means
    divided by q. A shift that comes out at or below 0 (no visible signal) is replaced by a thousandth of the
    noise, which makes the score the canary's summed coordinates.

    Raises:
        ValueError: if either world has no canary, or the out-canaries show no noise at all.
    """
    if rounds_in.size == 0 or rounds_out.size == 0:
        raise ValueError(f"fitting needs canaries of both worlds; found {rounds_in.shape[0]} in and "
                         f"{rounds_out.shape[0]} out.")
    noise = float(np.sqrt(np.mean(np.square(rounds_out, dtype=np.float64))))
    if not noise > 0.0:
        raise ValueError("the out-canaries' coordinates are all zero: the release carries no noise to fit "
                         "(the noise multiplier must be > 0 for an audit).")
    shift = (float(np.mean(rounds_in, dtype=np.float64)) - float(np.mean(rounds_out, dtype=np.float64))) / sample_rate
    return ReleaseModel(shift=max(shift, 1e-3 * noise), noise=noise, sample_rate=sample_rate)


def log_likelihood_ratio(rounds: np.ndarray, model: ReleaseModel) -> np.ndarray:
    """L(y) of every canary (one row of ``rounds`` each): log P_in(y) / P_out(y) under ``model``."""
    y = np.asarray(rounds, dtype=np.float64)
    exponent = (model.shift * y - model.shift ** 2 / 2.0) / model.noise ** 2
    q = model.sample_rate
    stay_out = math.log1p(-q) if q < 1.0 else -math.inf
    return np.logaddexp(stay_out, math.log(q) + exponent).sum(axis=1)


@dataclass(frozen=True)
class MembershipTest:
    """A fixed test on a canary's score: it fires at ``score >= threshold`` (pointing at "in") when ``in_above``,
    else at ``score < threshold`` (pointing at "out")."""

    threshold: float
    in_above: bool

    def fires(self, scores: np.ndarray) -> np.ndarray:
        s = np.asarray(scores)
        return s >= self.threshold if self.in_above else s < self.threshold


def choose_test(scores_in: np.ndarray, scores_out: np.ndarray, *, delta: float, alpha: float) -> MembershipTest:
    """The threshold and direction whose Clopper-Pearson epsilon bound is largest on these (tuning) canaries.

    Every observed score is a candidate threshold, in both directions. The choice is only as good as the tuning
    canaries; its bound is then measured afresh on canaries it never saw, so choosing costs no confidence.

    Raises:
        ValueError: if either world has no canary.
    """
    s_in, s_out = np.sort(np.asarray(scores_in, dtype=float)), np.sort(np.asarray(scores_out, dtype=float))
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError(f"choosing a test needs canaries of both worlds; found {s_in.size} in and {s_out.size} out.")
    thresholds = np.unique(np.concatenate([s_in, s_out]))
    in_at_or_above = s_in.size - np.searchsorted(s_in, thresholds, side="left")
    out_at_or_above = s_out.size - np.searchsorted(s_out, thresholds, side="left")
    above = epsilon_lower_bounds(in_at_or_above, s_in.size, out_at_or_above, s_out.size, delta=delta, alpha=alpha)
    below = epsilon_lower_bounds(s_out.size - out_at_or_above, s_out.size, s_in.size - in_at_or_above, s_in.size,
                                 delta=delta, alpha=alpha)
    i, j = int(np.argmax(above)), int(np.argmax(below))
    if below[j] > above[i]:
        return MembershipTest(threshold=float(thresholds[j]), in_above=False)
    return MembershipTest(threshold=float(thresholds[i]), in_above=True)
