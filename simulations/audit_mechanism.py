"""The privacy audit's one contact with the user-level mechanism that runs: play a run's rounds through it.

Everything the audit knows about the mechanism's interface is in ``release_rounds``: how a run builds it
(``privacy.user_level.UserLevelGaussian`` with its ledger and noise source), how a round samples its candidates
(``server.round.poisson_sample``), and how replies are folded in and released (``open_round``, ``add``,
``release``). When that interface changes (extra coordinates in a contribution, renamed methods), adapt this
function and ``tests/test_privacy_audit.py`` tells whether the audit still sees what it should.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from privacy.accounting import PrivacyLedger
from privacy.contribution import zero_statistics
from privacy.randomness import GaussianNoise
from privacy.user_level import UserLevelGaussian
from server.round import poisson_sample

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class MechanismSpec:
    """The user-level mechanism's parameters, as a run hands them to ``UserLevelGaussian``."""

    clipping_norm: float
    noise_multiplier: float
    sample_rate: float
    delta: float
    accountant: str


def release_rounds(spec: MechanismSpec, *, rounds: int, candidates: int, zero: Arrays,
                   contribution: Callable[[int], Arrays | None], noise: GaussianNoise,
                   sampling_rng: np.random.Generator) -> tuple[list[Arrays], PrivacyLedger]:
    """Every round's release of one run whose global model stays ``zero``.

    Each round Poisson-samples the ``candidates`` (the population N, so the release is divided by qN); a sampled
    candidate whose ``contribution`` is not None replies with that update (and all-zero statistics: the canaries
    live in the update's coordinates), folded into the round's accumulator (clipped to C, summed); the
    accumulator's release adds noise z*S to every coordinate (S the contribution's bound), divides the update by qN
    and records the release in the ledger.

    Returns:
        (each round's released arrays: ``zero`` + noisy sum / qN, the ledger the mechanism recorded them in).
    """
    ledger = PrivacyLedger()
    mechanism = UserLevelGaussian(clipping_norm=spec.clipping_norm, noise_multiplier=spec.noise_multiplier,
                                  sample_rate=spec.sample_rate, population=candidates, noise=noise, ledger=ledger,
                                  delta=spec.delta, accountant=spec.accountant)
    releases = []
    for _ in range(rounds):
        accumulator = mechanism.open_round(zero)
        for candidate in poisson_sample(sampling_rng, range(candidates), spec.sample_rate):
            update = contribution(candidate)
            if update is not None:
                accumulator.add(update, zero_statistics())
        [(mean, _)] = accumulator.release().updates
        releases.append({k: zero[k] + mean[k] for k in zero})
    return releases, ledger
