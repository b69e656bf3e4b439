"""The server's side of ``privacy=distributed``: plan the devices' noise, release the noisy sum they built, account it.

Under the distributed discrete Gaussian (``privacy.distributed_dp``) the server adds no noise: it receives the SecAgg+
sum of the devices' noised integer shares, decodes it, divides the update by the expected number of devices qN, as
DP-FedAvg does, and records the release. The ledger (``DistributedLedger``) holds each release's parameters (Delta2,
sigma_dev^2, the minimum survivors, the dimension, q) and composes their RDP from
``privacy.distributed_accounting`` (Kairouz, Liu & Steinke 2021's bound on the sum of the shares, amplified by
Poisson sampling with Zhu & Wang 2019's general bound, at integer orders). Every round is charged, including one that
released nothing (too few survivors, or a halted SecAgg+ round): the devices' noise was planned for it.

Who each epsilon holds against. The devices join rounds by their own coins (``server.round``: random check-ins), so
the amplified epsilon in the ledger holds against anyone who sees the released models without knowing who joined,
whatever the server does. The server (and the network) sees who joined a round; against it a device's privacy is the
unamplified mechanism composed over the rounds it actually joined (``epsilon_when_joined``): still bounded, since it
only ever sees noisy sums, where today's central DP gives it each device's contribution or the exact sum. Both hold
provided SecAgg+ holds (fewer than the reconstruction threshold of a device's neighbours collude with the server) and
at least ``min_survivors`` honest devices' shares are in each released sum (a server that also runs sybil devices
removes their shares from that count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from privacy.contribution import ReleasedStatistics, STATISTICS, contribution_sensitivity, decode_statistics
from privacy.distributed_accounting import calibrate_ddg_noise, ddg_orders, ddg_release_rdp, rdp_to_epsilon
from privacy.distributed_dp import DistributedDiscreteGaussian, padded_dimension, plan_distributed
from privacy.errors import PrivacyConfigError

Arrays = dict[str, np.ndarray]

Entry = tuple[float, float, int, int, float, int]
"""(Delta2, sigma_dev^2, min survivors, padded dimension, sample rate, releases)."""

_CALIBRATION_SENSITIVITY = 1000.0
"""Delta2 the noise-to-sensitivity ratio is calibrated at: large enough that the bound's discreteness term vanishes;
the plan's own parameters are then checked against the budget."""


def entry_rdp(entry: Entry, orders: list[float]) -> np.ndarray:
    """One ledger entry's RDP at ``orders``: its releases composed."""
    delta2, variance, survivors, dimension, rate, steps = entry
    return steps * ddg_release_rdp(sensitivity_l2=delta2, sigma_sq=variance, survivors=int(survivors),
                                   dimension=int(dimension), sample_rate=rate, orders=orders)


class DistributedLedger:
    """An append-only record of distributed discrete Gaussian releases, and the epsilon they compose to (RDP)."""

    def __init__(self) -> None:
        self.history: list[Entry] = []

    def record(self, plan: DistributedDiscreteGaussian, *, sample_rate: float, steps: int = 1) -> None:
        entry = (plan.norm_bound, float(plan.device_variance), plan.min_survivors, plan.padded, float(sample_rate))
        if self.history and self.history[-1][:5] == entry:
            self.history[-1] = (*entry, self.history[-1][5] + steps)
        else:
            self.history.append((*entry, int(steps)))

    @property
    def steps(self) -> int:
        return sum(entry[5] for entry in self.history)

    def epsilon(self, *, delta: float, accountant: str = "rdp") -> float:
        """Epsilon at ``delta`` of every release so far (0 before any)."""
        if not self.history:
            return 0.0
        orders = ddg_orders()
        return rdp_to_epsilon(orders, sum(entry_rdp(entry, orders) for entry in self.history), delta)

    def epsilon_after(self, plan: DistributedDiscreteGaussian, *, sample_rate: float, delta: float, steps: int = 1
                      ) -> float:
        trial = DistributedLedger()
        trial.history = list(self.history)
        trial.record(plan, sample_rate=sample_rate, steps=steps)
        return trial.epsilon(delta=delta)

    def state_dict(self) -> dict:
        return {"distributed": [list(entry) for entry in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [(float(a), float(v), int(t), int(d), float(q), int(n)) for a, v, t, d, q, n in state["distributed"]]


def epsilon_when_joined(plan: DistributedDiscreteGaussian, rounds_joined: int, *, delta: float) -> float:
    """Epsilon against a party that knows which rounds a device joined (the server): the unamplified mechanism
    (q = 1) over the ``rounds_joined`` releases that held its share."""
    if rounds_joined < 1:
        return 0.0
    ledger = DistributedLedger()
    ledger.record(plan, sample_rate=1.0, steps=rounds_joined)
    return ledger.epsilon(delta=delta)


def plan_lines(plan: DistributedDiscreteGaussian, *, sample_rate: float, rounds: int, delta: float) -> list[str]:
    """The plan as ``privacy.plan=true`` prints it: the devices' shares, the modulus, and epsilon against each party."""
    ledger = DistributedLedger()
    ledger.record(plan, sample_rate=sample_rate, steps=rounds)
    expected = max(1, round(sample_rate * rounds))
    return [
        f"each device's share: discrete Gaussian noise of variance {plan.device_variance} per coordinate on its "
        f"contribution rotated over {plan.padded} coordinates and scaled by {plan.scale:.4g} (one share's norm <= "
        f"{plan.norm_bound:.4g} after rounding)",
        f"{plan.min_survivors} surviving shares (fewer: the round releases nothing) give noise multiplier "
        f"{plan.noise_multiplier:.4f}; sums of up to {plan.max_contributors} devices mod 2**{plan.bits} wrap with "
        f"probability <= {max(plan.wrap_probability(), 1e-300):.1g} a round",
        f"ε = {ledger.epsilon(delta=delta):.3f} at δ = {delta:g} over {rounds} rounds at q = {sample_rate}: against "
        "anyone who sees the models but not who joined (the devices' own coins sample them)",
        f"against the server, which sees who joined: ε = {epsilon_when_joined(plan, 1, delta=delta):.3f} for a device "
        f"that joined 1 round, {epsilon_when_joined(plan, expected, delta=delta):.3f} for {expected} (q × rounds)",
    ]


def default_min_survivors(sample_rate: float, population: int) -> int:
    """The fewest survivors a round plans for when none is set: the 3-sigma low tail of the Binomial(N, q) sample,
    at least 2 (a round falls below it about once in 700)."""
    mean = sample_rate * population
    return max(2, math.floor(mean - 3.0 * math.sqrt(mean * (1.0 - sample_rate))))


def max_contributors(sample_rate: float, population: int) -> int:
    """The most devices a round's modulus is sized for: the 7-sigma high tail of the sample (a larger sample releases
    nothing, with probability below 1e-11), at most N."""
    mean = sample_rate * population
    return min(population, math.ceil(mean + 7.0 * math.sqrt(mean * (1.0 - sample_rate)) + 1.0))


def plan_run(*, target_epsilon: float, delta: float, sample_rate: float, rounds: int, population: int,
             clipping_norm: float, dimension: int, min_survivors: int | None = None) -> DistributedDiscreteGaussian:
    """The run's parameters: the devices' noise for ``target_epsilon`` over ``rounds`` releases at q over N users,
    for contributions of ``dimension`` coordinates clipped to C (sensitivity S), checked against the budget with the
    plan's own integer parameters.

    Raises:
        PrivacyConfigError: naming the key when no plan fits (the minimum survivors above the expected sample, or no
            modulus SecAgg+ can hold).
    """
    survivors = min_survivors or default_min_survivors(sample_rate, population)
    most = max_contributors(sample_rate, population)
    if survivors > sample_rate * population or survivors > most:
        raise PrivacyConfigError(
            f"privacy.min_survivors={survivors} is above the expected {sample_rate * population:g} devices a round "
            f"(simulation.sample_rate={sample_rate} of {population}): most rounds would release nothing. Lower it, or "
            "raise the sampling rate."
        )
    if survivors < 2:
        raise PrivacyConfigError(f"privacy=distributed needs at least 2 expected devices a round; q·N = "
                                 f"{sample_rate * population:g}. Raise simulation.sample_rate.")
    padded = padded_dimension(dimension)
    variance = calibrate_ddg_noise(target_epsilon=target_epsilon, delta=delta, sample_rate=sample_rate, steps=rounds,
                                   sensitivity_l2=_CALIBRATION_SENSITIVITY, survivors=survivors, dimension=padded)
    z = math.sqrt(survivors * variance) / _CALIBRATION_SENSITIVITY
    for _ in range(20):
        try:
            plan = plan_distributed(dimension=dimension, sensitivity=contribution_sensitivity(clipping_norm),
                                    noise_multiplier=z, min_survivors=survivors, max_contributors=most)
        except ValueError as error:
            raise PrivacyConfigError(f"privacy=distributed with privacy.min_survivors={survivors} and "
                                     f"simulation.sample_rate={sample_rate} over {population} users: {error}") from None
        ledger = DistributedLedger()
        ledger.record(plan, sample_rate=sample_rate, steps=rounds)
        if ledger.epsilon(delta=delta) <= target_epsilon:
            return plan
        z *= 1.01
    raise PrivacyConfigError(f"privacy=distributed: no plan meets privacy.target_epsilon={target_epsilon} "
                             f"(the integer rounding's share of the noise is too large for {dimension} coordinates).")


@dataclass
class DistributedRelease:
    """The run's mechanism under ``privacy=distributed``: the devices noise, the server decodes, divides, records.

    Attributes mirror ``privacy.user_level.UserLevelGaussian`` where the run reads them (clipping norm, noise
    multiplier, sampling rate, the budget check).
    """

    plan: DistributedDiscreteGaussian
    clipping_norm: float
    sample_rate: float
    population: int
    ledger: DistributedLedger
    delta: float
    target_epsilon: float | None = None
    user_level = True

    @property
    def noise_multiplier(self) -> float:
        return self.plan.noise_multiplier

    @property
    def expected_clients(self) -> float:
        return self.sample_rate * self.population

    def release(self, total: Arrays | None, statistics: np.ndarray | None, current: Arrays
                ) -> tuple[Arrays, ReleasedStatistics]:
        """(the decoded noisy sum / qN, the statistics read from it), recorded as one release. ``total`` None: the
        round released nothing (a zero step; still recorded, since the devices' noise was spent on it)."""
        self.ledger.record(self.plan, sample_rate=self.sample_rate)
        if total is None or statistics is None:
            zero = {k: np.zeros_like(v, dtype=np.float32) for k, v in current.items()}
            return zero, ReleasedStatistics(0.0, 0.0, 0.0, noisy=True)
        mean = {k: (np.asarray(v, dtype=np.float64) / self.expected_clients).astype(np.float32) for k, v in total.items()}
        return mean, decode_statistics(np.asarray(statistics, dtype=np.float64)[: len(STATISTICS)], self.clipping_norm,
                                       noisy=True)

    def epsilon(self) -> float | None:
        return self.ledger.epsilon(delta=self.delta)

    def epsilon_if_next_passes_budget(self, *, sample_rate: float | None = None) -> float | None:
        if self.target_epsilon is None:
            return None
        after = self.ledger.epsilon_after(self.plan, sample_rate=sample_rate or self.sample_rate, delta=self.delta)
        return after if after > self.target_epsilon else None
