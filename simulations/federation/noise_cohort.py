"""Simulating a population too large to train here: a small cohort trains, the noise is sized for the real one.

pfl-research's ``noise_cohort_size``: to see what user-level DP costs at N = 10^6 users with K = 10^4 clients a round,
train K_sim (e.g. 1,000) clients a round drawn from a pool of simulated users, and add to their sum the noise that
DP-FedAvg would add to the real cohort's sum, scaled so that the noisy *mean* carries the real cohort's noise:
std z·S·K_sim/K on the sum, divided by K_sim. z is calibrated, and the ledger records each release, at the real
q = K/N. What this leaves out: the real mean averages K updates, the simulation K_sim, so its signal is noisier by
the sampling of clients (never the DP noise), which makes the simulated utility a lower bound; every report of such
a run says it is a noise-cohort simulation (``LABEL``). Validated against a true run where both fit
(``benchmarks/privacy_utility.py --surface``).
"""

from __future__ import annotations

from dataclasses import dataclass

from privacy.user_level import UserLevelGaussian

LABEL = "noise-cohort simulation"


@dataclass(frozen=True)
class NoiseCohort:
    """The real federation a smaller simulation stands for: N users, each sampled with probability q a round."""

    population: int
    sample_rate: float

    @property
    def expected_clients(self) -> float:
        return self.population * self.sample_rate


class NoiseCohortGaussian(UserLevelGaussian):
    """The user-level Gaussian mechanism of the real cohort, released on a simulated cohort's sum (see above)."""

    def __init__(self, *, real: NoiseCohort, **kwargs) -> None:
        super().__init__(**kwargs)
        if real.expected_clients < self.expected_clients:
            raise ValueError(f"the real cohort ({real.expected_clients:g} clients a round) must be at least the "
                             f"simulated one ({self.expected_clients:g}).")
        self.real = real

    @classmethod
    def standing_for(cls, simulated: UserLevelGaussian, real: NoiseCohort) -> NoiseCohortGaussian:
        """The run's own mechanism (``server.aggregation.user_level_mechanism``) on the simulated cohort, with the
        noise and the ledger of ``real``."""
        return cls(real=real, clipping_norm=simulated.clipping_norm, noise_multiplier=simulated.noise_multiplier,
                   sample_rate=simulated.sample_rate, population=simulated.population, noise=simulated.noise,
                   ledger=simulated.ledger, delta=simulated.delta, accountant=simulated.accountant,
                   target_epsilon=simulated.target_epsilon, adaptive=simulated.adaptive)

    @property
    def noise_scale(self) -> float:  # type: ignore[override]
        return self.expected_clients / self.real.expected_clients

    @property
    def accounted_sample_rate(self) -> float:
        return self.real.sample_rate
