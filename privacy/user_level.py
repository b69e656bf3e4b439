"""User-level DP-FedAvg as one mechanism object, and a no-privacy stand-in with the same interface.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models", Alg. 1): every
sampled user's update (new weights minus the global model) is clipped to L2 norm C, the clipped updates are summed,
Gaussian noise of std z*C is added to the sum, and the result is divided by the *expected* number of users qN, so
one user moves the release by at most C/(qN) whoever else replied: the Poisson-subsampled Gaussian mechanism whose
(q, z) the ``PrivacyLedger`` records at every release. As in pfl-research's privacy mechanisms, the mechanism is split
into constraining sensitivity (``clip``; a device may run it, as under secure aggregation) and adding noise
(``release_sum``), and running without privacy is an object (``NoUserLevelPrivacy``), not an ``if`` in the round
loop. Every path that releases a global model (the plain round, the SecAgg+ round, the in-process driver) goes
through ``UserLevelGaussian.release_sum``. Framework-free: numpy in, numpy out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol

import numpy as np

from privacy.accounting import PrivacyLedger
from privacy.errors import PrivacyConfigError
from privacy.mechanisms import add_gaussian_noise, clip_update, global_norm
from privacy.randomness import GaussianNoise

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ClippingStats:
    """What a round's updates looked like before aggregation (from raw updates: not covered by epsilon)."""

    clipped_fraction: float
    mean_update_norm: float


class RoundAccumulator(Protocol):
    """One round's replies, folded in as they arrive; ``release`` gives what the server strategy aggregates."""

    count: int

    def add(self, arrays: Arrays, weight: float) -> None: ...

    def release(self) -> list[tuple[Arrays, float]]: ...

    def stats(self) -> ClippingStats: ...


class _Norms:
    def __init__(self) -> None:
        self.norms: list[float] = []
        self.clipped: list[bool] = []

    @property
    def count(self) -> int:
        return len(self.norms)

    def stats(self) -> ClippingStats:
        return ClippingStats(clipped_fraction=float(np.mean(self.clipped)) if self.clipped else 0.0,
                             mean_update_norm=float(np.mean(self.norms)) if self.norms else 0.0)


class _ClippedSum(_Norms):
    """Each update clipped and added to a running sum at once, then dropped: one model-sized sum per round."""

    def __init__(self, mechanism: UserLevelGaussian, current: Arrays) -> None:
        super().__init__()
        self.mechanism, self.current = mechanism, current
        self.total = {k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()}

    def add(self, arrays: Arrays, weight: float) -> None:  # the weight is ignored: every user counts once
        clipped, norm, was_clipped = self.mechanism.clip({k: arrays[k] - self.current[k] for k in self.current})
        for k in self.total:
            self.total[k] += clipped[k]
        self.norms.append(norm)
        self.clipped.append(was_clipped)

    def release(self) -> list[tuple[Arrays, float]]:
        """The noisy mean as one pseudo-update of weight 1, released even when nobody replied (it is counted)."""
        return [(self.mechanism.release_sum(self.current, self.total), 1.0)]


class _KeptUpdates(_Norms):
    """Without privacy the replies are kept as they are, with their weights (FedMedian and Krum need them all)."""

    def __init__(self, current: Arrays) -> None:
        super().__init__()
        self.current = current
        self.kept: list[tuple[Arrays, float]] = []

    def add(self, arrays: Arrays, weight: float) -> None:
        self.norms.append(global_norm({k: arrays[k] - self.current[k] for k in self.current}))
        self.clipped.append(False)
        self.kept.append((arrays, weight))

    def release(self) -> list[tuple[Arrays, float]]:
        return list(self.kept)


class UserLevelGaussian:
    """The user-level Gaussian mechanism of one run: clip, sum, noise z*C, divide by qN, record in the ledger.

    Args:
        clipping_norm: C.
        noise_multiplier: z, calibrated once for the run's planned releases.
        sample_rate: q, each user's probability of being sampled in a round.
        population: N, the users (or nodes) sampled from; qN divides every noisy sum.
        noise: where the Gaussian noise comes from (``privacy.randomness``).
        ledger: the run's ledger; every release is recorded in it.
        delta, accountant: how epsilon is computed from the ledger.
        target_epsilon: the budget no release may pass (None: no budget check).

    Raises:
        PrivacyConfigError: if delta is not below 1/N (a larger delta can leak one user's data outright).
    """

    user_level = True

    def __init__(self, *, clipping_norm: float, noise_multiplier: float, sample_rate: float, population: int,
                 noise: GaussianNoise, ledger: PrivacyLedger, delta: float, accountant: str,
                 target_epsilon: float | None = None) -> None:
        if not clipping_norm > 0.0 or not noise_multiplier >= 0.0:
            raise PrivacyConfigError(f"the clipping norm must be > 0 and the noise multiplier >= 0; found "
                                     f"{clipping_norm}, {noise_multiplier}.")
        if not delta < 1.0 / population:
            raise PrivacyConfigError(
                f"privacy.delta must be < 1/N = {1.0 / population:g} for the N = {population} users sampled from "
                f"(a larger delta can leak one user's data outright); found {delta}."
            )
        self.clipping_norm, self.noise_multiplier, self.sample_rate = clipping_norm, noise_multiplier, sample_rate
        self.expected_clients = sample_rate * population
        self.noise, self.ledger = noise, ledger
        self.delta, self.accountant, self.target_epsilon = delta, accountant, target_epsilon

    def open_round(self, current: Arrays) -> RoundAccumulator:
        return _ClippedSum(self, current)

    def clip(self, update: Mapping[str, np.ndarray]) -> tuple[Arrays, float, bool]:
        """Constrain sensitivity: the update scaled to norm at most C (update, its norm before, was it clipped)."""
        return clip_update(update, self.clipping_norm)

    def release_sum(self, current: Arrays, total: Mapping[str, np.ndarray], *, sensitivity: float | None = None) -> Arrays:
        """``current`` + (``total`` + N(0, (z * sensitivity)^2)) / qN, recorded in the ledger as one release.

        ``sensitivity`` is one user's largest contribution to ``total``: C by default; more under secure
        aggregation, whose rounding can lengthen a clipped update (``server.secagg``).

        Raises:
            ValueError: if ``sensitivity`` is below C (the noise would not cover a clipped update).
        """
        sensitivity = self.clipping_norm if sensitivity is None else sensitivity
        if sensitivity < self.clipping_norm:
            raise ValueError(f"sensitivity must be >= the clipping norm {self.clipping_norm}; found {sensitivity}.")
        noisy = add_gaussian_noise(total, self.noise_multiplier * sensitivity, self.noise)
        self.ledger.record(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        return {k: current[k] + noisy[k] / self.expected_clients for k in current}

    def epsilon(self) -> float | None:
        return self.ledger.epsilon(delta=self.delta, accountant=self.accountant)

    def epsilon_if_next_passes_budget(self) -> float | None:
        """Epsilon after one more release if that passes ``target_epsilon``; None while it fits."""
        if self.target_epsilon is None:
            return None
        after = self.ledger.epsilon_after(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
                                          delta=self.delta, accountant=self.accountant)
        return after if after > self.target_epsilon else None


class NoUserLevelPrivacy:
    """No user-level DP: updates aggregated as they are, no noise, no ledger entry, no epsilon (for comparison)."""

    user_level = False
    noise_multiplier = None

    def open_round(self, current: Arrays) -> RoundAccumulator:
        return _KeptUpdates(current)

    def epsilon(self) -> float | None:
        return None

    def epsilon_if_next_passes_budget(self) -> float | None:
        return None


UserLevelMechanism = UserLevelGaussian | NoUserLevelPrivacy
