"""Accounting: what mechanism ran, recorded as data; epsilon computed from that record by Opacus' accountants.

A ``PrivacyLedger`` holds ``(noise_multiplier, sample_rate, steps)`` entries of the Poisson-subsampled Gaussian
mechanism, exactly the history format of Opacus' accountants, so epsilon for RDP (Mironov 2017; Mironov, Talwar &
Zhang 2019) or PRV (Gopi, Lee & Wutschitz 2021) comes straight from ``opacus.accountants``. The guarantee holds only
for the mechanism recorded: each participant sampled independently with probability ``sample_rate``, its
contribution clipped to norm C, Gaussian noise of std ``noise_multiplier * C`` added to the sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from privacy.errors import PrivacyConfigError

# Opacus is imported inside the functions that use it: importing it costs ~2.4 s of CPU, and a device's ClientApp
# (a fresh process per message under the deployment engine) needs it only when record-level DP is on.

ACCOUNTANTS = ("rdp", "prv")


def validate_accounting_inputs(*, delta: float, sample_rate: float, accountant: str) -> None:
    """Raise ``PrivacyConfigError`` naming the first input outside its allowed range."""
    if not 0.0 < delta < 1.0:
        raise PrivacyConfigError(f"privacy.delta must be in (0, 1); found {delta}.")
    if not 0.0 < sample_rate <= 1.0:
        raise PrivacyConfigError(f"sample_rate must be in (0, 1]; found {sample_rate}.")
    if accountant not in ACCOUNTANTS:
        raise PrivacyConfigError(f"privacy.accountant must be one of {list(ACCOUNTANTS)}; found {accountant!r}.")


class PrivacyLedger:
    """An append-only record of subsampled Gaussian releases, and the epsilon they add up to."""

    def __init__(self) -> None:
        self.history: list[tuple[float, float, int]] = []

    def record(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Append ``steps`` releases (merged with the last entry when the mechanism is the same)."""
        if steps < 0:
            raise ValueError(f"steps must be >= 0; found {steps}.")
        if steps == 0:
            return
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            z, q, n = self.history[-1]
            self.history[-1] = (z, q, n + steps)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.history)

    def epsilon(self, *, delta: float, accountant: str = "rdp") -> float:
        """Epsilon spent so far at ``delta`` (0 before any release; inf for a release with no noise)."""
        if not self.history:
            return 0.0
        if any(z <= 0.0 for z, _, _ in self.history):
            return float("inf")
        if accountant == "rdp":  # the same numbers as Opacus' RDPAccountant, reusing each mechanism's RDP curve
            return fast_rdp_epsilon(self.history, delta=delta)
        from opacus.accountants import create_accountant

        acc = create_accountant(mechanism=accountant)
        acc.history = list(self.history)
        return float(acc.get_epsilon(delta=delta))

    def epsilon_after(self, *, noise_multiplier: float, sample_rate: float, delta: float, accountant: str, steps: int = 1) -> float:
        """Epsilon if ``steps`` more releases of the given mechanism happened: the check before each round."""
        trial = PrivacyLedger()
        trial.history = list(self.history)
        trial.record(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        return trial.epsilon(delta=delta, accountant=accountant)

    def state_dict(self) -> dict:
        return {"history": [list(entry) for entry in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [(float(z), float(q), int(n)) for z, q, n in state["history"]]


MAX_NOISE_MULTIPLIER = 1e6
"""The largest noise multiplier the calibration tries (Opacus' ``MAX_SIGMA``)."""


def planned_epsilon(noise_multiplier: float, *, sample_rate: float, steps: int, delta: float, accountant: str = "rdp",
                    also: Sequence[tuple[float, int]] = ()) -> float:
    """The ε of ``steps`` releases at (z, ``sample_rate``) and the ``also`` releases, as (sample rate, releases), at the
    same z: what a run's ledger will hold once its plan has run."""
    ledger = PrivacyLedger()
    for q, n in ((sample_rate, steps), *also):
        ledger.history.append((float(noise_multiplier), float(q), int(n)))
    return ledger.epsilon(delta=delta, accountant=accountant)


def calibrate_noise_multiplier(
    *, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp",
    also: Sequence[tuple[float, int]] = (),
) -> float:
    """The smallest noise multiplier (to 1 % of the budget) whose ``steps`` releases at ``sample_rate``, and the
    releases ``also`` lists as (sample rate, releases) at the same noise multiplier, stay within the budget.

    The search is Opacus' ``get_noise_multiplier`` (double an upper bound until it fits, then bisect until epsilon is
    within the tolerance below the target), run on a ledger so that releases at other sampling rates (the devices'
    federated evaluation) are composed in. Costs up to 1-2 s: call once per run, never per client.

    Raises:
        PrivacyConfigError: if an input is out of range, or no noise multiplier up to 1e6 fits the budget.
    """
    if not target_epsilon > 0.0:
        raise PrivacyConfigError(f"privacy.target_epsilon must be > 0; found {target_epsilon}.")
    if steps < 1 or any(n < 1 for _, n in also):
        raise PrivacyConfigError(f"the number of planned releases must be >= 1; found {steps} and {list(also)}.")
    for rate in (sample_rate, *(q for q, _ in also)):
        validate_accounting_inputs(delta=delta, sample_rate=rate, accountant=accountant)

    def epsilon(z: float) -> float:
        return planned_epsilon(z, sample_rate=sample_rate, steps=steps, also=also, delta=delta, accountant=accountant)

    tolerance = 0.01 * target_epsilon
    low, high, eps_high = 0.0, 10.0, float("inf")
    while eps_high > target_epsilon:
        high *= 2.0
        if high > MAX_NOISE_MULTIPLIER:
            raise PrivacyConfigError(f"privacy.target_epsilon={target_epsilon} cannot be reached at delta={delta} "
                                     f"with any noise multiplier up to {MAX_NOISE_MULTIPLIER:g}.")
        eps_high = epsilon(high)
    while target_epsilon - eps_high > tolerance:
        middle = (low + high) / 2.0
        eps = epsilon(middle)
        if eps < target_epsilon:
            high, eps_high = middle, eps
        else:
            low = middle
    return high


def _alphas() -> list[float]:
    from opacus.accountants.rdp import RDPAccountant

    return list(RDPAccountant.DEFAULT_ALPHAS)


@lru_cache(maxsize=4096)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    # RDP of the subsampled Gaussian composes linearly in the number of steps (Mironov 2017, Prop. 1).
    from opacus.accountants.analysis import rdp as rdp_analysis

    return np.asarray(rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=_alphas()))


def fast_rdp_epsilon(history: list[tuple[float, float, int]], *, delta: float) -> float:
    """RDP epsilon of a ledger history, equal to ``opacus.accountants.RDPAccountant`` but cached per mechanism.

    A client checks its record-level budget every round; Opacus recomputes every order from scratch (~40 ms),
    this reuses the one-step RDP curve of each ``(noise_multiplier, sample_rate)`` seen before (microseconds).
    """
    if not history:
        return 0.0
    if any(z <= 0.0 for z, _, _ in history):
        return float("inf")
    from opacus.accountants.analysis import rdp as rdp_analysis

    total = sum(n * _rdp_one_step(float(z), float(q)) for z, q, n in history)
    eps, _ = rdp_analysis.get_privacy_spent(orders=_alphas(), rdp=total, delta=delta)
    return float(eps)


Entry = tuple[float, ...]
"""An announced release: Gaussian (z, q, steps), or distributed discrete Gaussian (Delta2, sigma_dev^2, minimum
survivors, padded dimension, q, steps) as ``privacy.distributed_release.DistributedLedger`` records it."""


def announced_epsilon(entries: Sequence[Entry], *, delta: float) -> float:
    """Epsilon of releases of either mechanism composed, on Opacus' RDP orders: a Gaussian entry's RDP as
    ``fast_rdp_epsilon`` has it; a distributed entry's at the integer order ceil(alpha) (``privacy.
    distributed_accounting``: its subsampling bound needs integers, and RDP never decreases with the order, so this
    bounds it at alpha). What a device composes across the runs it joined."""
    gaussian = [tuple(e) for e in entries if len(e) == 3]
    distributed = [tuple(e) for e in entries if len(e) == 6]
    if len(gaussian) + len(distributed) != len(entries):
        raise ValueError(f"an announced release has 3 (Gaussian) or 6 (distributed) fields; found {list(entries)}.")
    if not distributed:
        return fast_rdp_epsilon(gaussian, delta=delta)  # type: ignore[arg-type]
    if any(z <= 0.0 for z, _, _ in gaussian):
        return float("inf")
    from privacy.distributed_accounting import rdp_to_epsilon
    from privacy.distributed_release import entry_rdp

    orders = _alphas()
    total = sum((n * _rdp_one_step(float(z), float(q)) for z, q, n in gaussian), np.zeros(len(orders)))
    total = total + sum(entry_rdp(entry, orders) for entry in distributed)  # type: ignore[arg-type]
    return rdp_to_epsilon(orders, total, delta)
