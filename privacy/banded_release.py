"""The run's user-level mechanism under ``privacy.mechanism=bandmf``: DP-FedAvg's bound-sum-divide, with the noise
of DP-FTRL's banded matrix factorisation (``privacy.banded_mf``) and no amplification by sampling.

Each round the clipped sum (update and statistics, each device's contribution of norm <= S) gets the next row of
``C^-1 Z``, Z i.i.d. N(0, (z S)^2) from the run's noise source; the sum is divided by the expected cohort N / b (the
server trains one of b groups a round). Every release is post-processing of ``C X + Z``. A device joins rounds at
least b apart, so after t rounds it can have joined ceil(t / b) of them: the ledger records one full-participation
Gaussian release (sample rate 1) at rounds 1, b + 1, 2b + 1, ..., and the run's z is calibrated for
k = ceil(R / b) of them (``banded_noise_multiplier``). The guarantee holds against anyone who sees the released
models, with the server trusted to add the noise (as for DP-FedAvg); it does not depend on who the server picks.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from privacy.accounting import calibrate_noise_multiplier
from privacy.banded_mf import CorrelatedNoise, banded_factor, banded_sensitivity, participations
from privacy.contribution import STATISTICS
from privacy.user_level import Arrays, UserLevelGaussian

NO_AMPLIFICATION = 1.0
"""The sample rate every banded release is accounted at: nothing is assumed about how devices are picked."""


def banded_noise_multiplier(*, target_epsilon: float, delta: float, rounds: int, bands: int, accountant: str,
                            evaluation: bool = False) -> float:
    """z for k = ceil(rounds / bands) releases of the Gaussian mechanism (and the devices' final evaluation, one
    more), with no amplification: the run's whole noise for ``target_epsilon``."""
    also = [(NO_AMPLIFICATION, 1)] if evaluation else []
    return calibrate_noise_multiplier(target_epsilon=target_epsilon, delta=delta, sample_rate=NO_AMPLIFICATION,
                                      steps=participations(rounds, bands), accountant=accountant, also=also)


class BandedMatrixGaussian(UserLevelGaussian):
    """DP-FTRL with a ``bands``-banded factor over ``rounds`` rounds as the run's user-level mechanism.

    Args:
        bands: b, the factor's bands and a device's fewest rounds between two it joins.
        rounds: R, the rounds the factor covers; the run stops before round R + 1.
        population: N; each round's sum is divided by the expected cohort N / b.
        kwargs: as ``UserLevelGaussian`` (its ``sample_rate`` is set to 1/b).
    """

    def __init__(self, *, bands: int, rounds: int, **kwargs) -> None:
        kwargs["sample_rate"] = 1.0 / bands
        super().__init__(**kwargs)
        if self.adaptive is not None:
            raise ValueError("the banded mechanism needs a fixed clipping norm.")
        self.bands, self.rounds = bands, rounds
        self.factor = banded_factor(rounds, bands)
        self.max_participations = participations(rounds, bands)
        bound = banded_sensitivity(self.factor, bands=bands, max_participations=self.max_participations)
        if bound > math.sqrt(self.max_participations) * (1.0 + 1e-9):  # what the calibration assumed
            raise ValueError(f"the factor moves by {bound} > sqrt(k) for k = {self.max_participations}.")
        self.correlated = CorrelatedNoise(self.factor, bands)
        self.rounds_released = 0

    @property
    def accounted_sample_rate(self) -> float:
        return NO_AMPLIFICATION

    def add_noise(self, total: Mapping[str, np.ndarray], statistics: np.ndarray,
                  std: float) -> tuple[Arrays, np.ndarray]:
        """The next row of ``C^-1 Z`` on the round's sum, Z's row drawn i.i.d. N(0, std^2) over every coordinate."""
        sizes = [int(np.size(v)) for v in total.values()]
        row = self.correlated.next(self.noise.sample((sum(sizes) + len(STATISTICS),), std))
        noisy, offset = {}, 0
        for (name, value), size in zip(total.items(), sizes):
            noise = row[offset: offset + size].reshape(np.shape(value))
            noisy[name] = (np.asarray(value, dtype=np.float64) + noise).astype(np.float32)
            offset += size
        return noisy, statistics + row[offset:]

    def record_release(self) -> None:
        """A device may have joined one more round at rounds 1, b + 1, 2b + 1, ...: one more release then."""
        if self.rounds_released % self.bands == 0:
            self.ledger.record(noise_multiplier=self.noise_multiplier, sample_rate=NO_AMPLIFICATION)
        self.rounds_released += 1

    def release_scores(self, total: np.ndarray, *, sample_rate: float) -> np.ndarray:
        """The devices' scores, as ``UserLevelGaussian``'s, accounted with no amplification."""
        return super().release_scores(total, sample_rate=NO_AMPLIFICATION)

    def epsilon_if_next_passes_budget(self, *, sample_rate: float | None = None) -> float | None:
        if self.target_epsilon is None:
            return None
        adds = sample_rate is not None or self.rounds_released % self.bands == 0
        after = self.ledger.epsilon_after(noise_multiplier=self.noise_multiplier, sample_rate=NO_AMPLIFICATION,
                                          delta=self.delta, accountant=self.accountant, steps=int(adds))
        return after if after > self.target_epsilon else None
