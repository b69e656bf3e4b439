"""User-level DP-FedAvg as one mechanism object, and a no-privacy stand-in with the same interface.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models", Alg. 1): every
sampled user's contribution (``privacy.contribution``: the update, new weights minus the global model, clipped to L2
norm C, and its bounded statistics) is summed, Gaussian noise of std z*S (S the contribution's largest norm) is
added to every coordinate of the sum, and the update's sum is divided by the *expected* number of users qN, so one
user moves the release by at most S/(qN) whoever else replied: the Poisson-subsampled Gaussian mechanism whose
(q, z) the ``PrivacyLedger`` records at every release. The statistics (participants, unclipped updates, loss) are
read from the same noisy sum, so every figure a round reports is covered by its epsilon. As in pfl-research's
privacy mechanisms, the mechanism is split into constraining sensitivity (``clip``; a device runs it, and the
server again) and adding noise (``release_sum``), and running without privacy is an object
(``NoUserLevelPrivacy``), not an ``if`` in the round loop. Every path that releases a global model (the plain
round, the SecAgg+ round, the in-process driver) goes through ``UserLevelGaussian.release_sum``; the devices'
federated evaluation goes through ``release_scores``, recorded in the same ledger. With ``adaptive`` clipping
(``privacy.adaptive_clipping``) C follows a quantile of the update norms, read from each release.
Framework-free: numpy in, numpy out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from privacy.accounting import PrivacyLedger
from privacy.adaptive_clipping import AdaptiveClipping
from privacy.contribution import (
    ReleasedStatistics,
    STATISTICS,
    bound_statistics,
    contribution_sensitivity,
    decode_statistics,
)
from privacy.errors import PrivacyConfigError
from privacy.mechanisms import add_gaussian_noise, clip_update
from privacy.randomness import GaussianNoise

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class RoundRelease:
    """What one round releases: the update(s) the Flower strategy steps from, each with its weight, and the
    round's statistics (from the noisy sum under user-level DP)."""

    updates: list[tuple[Arrays, float]]
    statistics: ReleasedStatistics


class RoundAccumulator(Protocol):
    """One round's contributions, folded in as they arrive."""

    count: int

    def add(self, update: Arrays, statistics: np.ndarray) -> bool:
        """Fold in one device's update (new weights minus the global model) and its statistics' coordinates; False
        (nothing folded in) when the bounded contribution is not finite."""

    def release(self) -> RoundRelease: ...


class _ClippedSum:
    """Each contribution bounded (update clipped to C, statistics clamped) and added to a running sum at once, then
    dropped: one model-sized sum per round."""

    def __init__(self, mechanism: UserLevelGaussian, current: Arrays) -> None:
        self.mechanism, self.count = mechanism, 0
        self.total = {k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()}
        self.statistics = np.zeros(len(STATISTICS), dtype=np.float64)

    def add(self, update: Arrays, statistics: np.ndarray) -> bool:
        with np.errstate(over="ignore", invalid="ignore"):
            clipped, _, _ = self.mechanism.clip(update)
        if not all(np.all(np.isfinite(clipped[k])) for k in self.total):  # an Inf clips to NaN: never into the sum
            return False
        for k in self.total:
            self.total[k] += clipped[k]
        self.statistics += bound_statistics(statistics, self.mechanism.clipping_norm)
        self.count += 1
        return True

    def release(self) -> RoundRelease:
        """The noisy mean update as one pseudo-update of weight 1, released even when nobody replied (it is
        counted)."""
        mean, statistics = self.mechanism.release_sum(self.total, self.statistics)
        return RoundRelease([(mean, 1.0)], statistics)


class _KeptUpdates:
    """Without privacy the participants' updates are kept as they are, each of weight 1 (FedMedian and Krum need
    them all); a declining device's (all-zero) contribution is counted in the statistics and not kept."""

    def __init__(self) -> None:
        self.count, self.kept = 0, []
        self.statistics = np.zeros(len(STATISTICS), dtype=np.float64)

    def add(self, update: Arrays, statistics: np.ndarray) -> bool:
        if not all(np.all(np.isfinite(v)) for v in update.values()):
            return False
        bounded = bound_statistics(statistics, None)
        self.statistics += bounded
        self.count += 1
        if bounded[0] > 0.0:
            self.kept.append((update, 1.0))
        return True

    def release(self) -> RoundRelease:
        return RoundRelease(list(self.kept), decode_statistics(self.statistics, None, noisy=False))


class UserLevelGaussian:
    """The user-level Gaussian mechanism of one run: bound, sum, noise z*S, divide by qN, record in the ledger.

    Args:
        clipping_norm: C (the first round's, under adaptive clipping).
        noise_multiplier: z, calibrated once for the run's planned releases.
        sample_rate: q, each user's probability of being sampled in a round.
        population: N, the users (or nodes) sampled from; qN divides every noisy sum.
        noise: where the Gaussian noise comes from (``privacy.randomness``).
        ledger: the run's ledger; every release is recorded in it.
        delta, accountant: how epsilon is computed from the ledger.
        target_epsilon: the budget no release may pass (None: no budget check).
        adaptive: the rule C follows from round to round (None: C is fixed).

    Raises:
        PrivacyConfigError: if delta is not below 1/N (a larger delta can leak one user's data outright).
    """

    user_level = True

    def __init__(self, *, clipping_norm: float, noise_multiplier: float, sample_rate: float, population: int,
                 noise: GaussianNoise, ledger: PrivacyLedger, delta: float, accountant: str,
                 target_epsilon: float | None = None, adaptive: AdaptiveClipping | None = None) -> None:
        if not clipping_norm > 0.0 or not noise_multiplier >= 0.0:
            raise PrivacyConfigError(f"the clipping norm must be > 0 and the noise multiplier >= 0; found "
                                     f"{clipping_norm}, {noise_multiplier}.")
        if not delta < 1.0 / population:
            raise PrivacyConfigError(
                f"privacy.delta must be < 1/N = {1.0 / population:g} for the N = {population} users sampled from "
                f"(a larger delta can leak one user's data outright); found {delta}."
            )
        self.clipping_norm, self.noise_multiplier, self.sample_rate = clipping_norm, noise_multiplier, sample_rate
        self.population, self.expected_clients = population, sample_rate * population
        self.noise, self.ledger = noise, ledger
        self.delta, self.accountant, self.target_epsilon = delta, accountant, target_epsilon
        self.adaptive = adaptive

    @property
    def sensitivity(self) -> float:
        """S: the largest norm of one device's bounded contribution this round."""
        return contribution_sensitivity(self.clipping_norm)

    noise_scale = 1.0
    """The sum's noise std in units of z·S: 1, unless a simulation sizes the noise for a larger cohort than it trains
    (``simulations.federation.noise_cohort``)."""

    @property
    def accounted_sample_rate(self) -> float:
        """The q the ledger records: the sampling that ran (a noise-cohort simulation records the one it stands for)."""
        return self.sample_rate

    def open_round(self, current: Arrays) -> RoundAccumulator:
        return _ClippedSum(self, current)

    def clip(self, update: Mapping[str, np.ndarray]) -> tuple[Arrays, float, bool]:
        """Constrain sensitivity: the update scaled to norm at most C (update, its norm before, was it clipped)."""
        return clip_update(update, self.clipping_norm)

    def release_sum(self, total: Mapping[str, np.ndarray], statistics: np.ndarray, *,
                    sensitivity: float | None = None) -> tuple[Arrays, ReleasedStatistics]:
        """(``total``'s noisy sum / qN, the noisy statistics), with N(0, (z * sensitivity)^2) on every coordinate of
        ``total`` and ``statistics``, recorded in the ledger as one release; then C adapts (if adaptive).

        ``sensitivity`` is one user's largest contribution: S by default; more under secure aggregation, whose
        rounding can lengthen a bounded contribution (``server.secagg``).

        Raises:
            ValueError: if ``sensitivity`` is below S (the noise would not cover a bounded contribution).
        """
        sensitivity = self.sensitivity if sensitivity is None else sensitivity
        if sensitivity < self.sensitivity:
            raise ValueError(f"sensitivity must be >= the contribution's bound {self.sensitivity}; found {sensitivity}.")
        std = self.noise_multiplier * sensitivity * self.noise_scale
        noisy, noisy_statistics = self.add_noise(total, np.asarray(statistics, dtype=np.float64), std)
        self.record_release()
        released = decode_statistics(noisy_statistics, self.clipping_norm, noisy=True)
        if self.adaptive is not None:
            self.clipping_norm = self.adaptive.next_norm(self.clipping_norm, released.unclipped_fraction)
        return {k: (v / self.expected_clients).astype(np.float32) for k, v in noisy.items()}, released

    def add_noise(self, total: Mapping[str, np.ndarray], statistics: np.ndarray,
                  std: float) -> tuple[Arrays, np.ndarray]:
        """``total`` and ``statistics`` with independent N(0, std^2) on every coordinate (the arrays back in float32)."""
        return add_gaussian_noise(dict(total), std, self.noise), statistics + self.noise.sample((len(STATISTICS),), std)

    def record_release(self) -> None:
        """Record one round's release in the ledger: a Poisson-subsampled Gaussian at (z, q)."""
        self.ledger.record(noise_multiplier=self.noise_multiplier, sample_rate=self.accounted_sample_rate)

    def release_scores(self, total: np.ndarray, *, sample_rate: float) -> np.ndarray:
        """The devices' summed evaluation scores (each coordinate of a device's scores in [0, 1]) with
        N(0, (z * sqrt(k))^2) on each of the k coordinates, recorded in the ledger as one release at ``sample_rate``."""
        total = np.asarray(total, dtype=np.float64)
        std = self.noise_multiplier * math.sqrt(total.size)
        self.ledger.record(noise_multiplier=self.noise_multiplier, sample_rate=sample_rate)
        return total + self.noise.sample(total.shape, std)

    def epsilon(self) -> float | None:
        return self.ledger.epsilon(delta=self.delta, accountant=self.accountant)

    def epsilon_if_next_passes_budget(self, *, sample_rate: float | None = None) -> float | None:
        """Epsilon after one more release (a round's, or at ``sample_rate`` the devices' scores) if that passes
        ``target_epsilon``; None while it fits."""
        if self.target_epsilon is None:
            return None
        after = self.ledger.epsilon_after(noise_multiplier=self.noise_multiplier,
                                          sample_rate=self.accounted_sample_rate if sample_rate is None else sample_rate,
                                          delta=self.delta, accountant=self.accountant)
        return after if after > self.target_epsilon else None


class NoUserLevelPrivacy:
    """No user-level DP: updates aggregated as they are, no noise, no ledger entry, no epsilon (for comparison)."""

    user_level = False
    noise_multiplier = None
    clipping_norm = None

    def open_round(self, current: Arrays) -> RoundAccumulator:
        return _KeptUpdates()

    def release_scores(self, total: np.ndarray, *, sample_rate: float) -> np.ndarray:
        return np.asarray(total, dtype=np.float64)

    def epsilon(self) -> float | None:
        return None

    def epsilon_if_next_passes_budget(self, *, sample_rate: float | None = None) -> float | None:
        return None


UserLevelMechanism = UserLevelGaussian | NoUserLevelPrivacy
