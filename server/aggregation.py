"""Turning one round's client updates into the next global prior.

Flower's strategies do the server-side step (FedAvg's weighted mean, FedAdam's adaptive step, FedMedian,
FedTrimmedAvg, Krum). Under user-level DP they receive, instead of the client models, one pseudo-reply carrying
``global + noisy mean update`` from DP-FedAvg (McMahan et al. 2018, Alg. 1): every update clipped to norm C, the
clipped updates summed, Gaussian noise of std z*C added to the sum, the result divided by the *expected* number of
clients qN. Dividing by the expected rather than the actual count keeps the sensitivity at C/(qN), which is what
the accountant's (q, z) describe; the strategy's step is post-processing and costs no privacy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedTrimmedAvg, Krum

from client.records import from_array_record, to_array_record
from privacy.mechanisms import add_gaussian_noise, clip_update, global_norm
from server.replies import ClientUpdate
from server.settings import StrategySettings

Arrays = dict[str, np.ndarray]


def make_strategy(settings: StrategySettings) -> FedAvg:
    """The Flower strategy named in config; only its ``aggregate_train`` is used (we sample and send ourselves)."""
    never_wait = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=0, min_evaluate_nodes=0, min_available_nodes=0)
    if settings.name == "fedavg":
        return FedAvg(**never_wait)
    if settings.name == "fedadam":
        return FedAdam(**never_wait, eta=settings.server_lr, beta_1=settings.beta_1, beta_2=settings.beta_2, tau=settings.tau)
    if settings.name == "fedmedian":
        return FedMedian(**never_wait)
    if settings.name == "krum":
        return Krum(**never_wait, num_malicious_nodes=settings.num_malicious_nodes)
    return FedTrimmedAvg(**never_wait, beta=settings.beta)


def strategy_state(strategy: FedAvg) -> dict:
    """What a strategy carries between rounds (FedAdam's moments), for checkpoints."""
    return {name: getattr(strategy, name) for name in ("m_t", "v_t") if getattr(strategy, name, None) is not None}


def load_strategy_state(strategy: FedAvg, state: dict) -> None:
    for name, value in state.items():
        setattr(strategy, name, value)


def _pseudo_reply(arrays: Arrays, weight: float) -> Message:
    content = RecordDict({"arrays": to_array_record(arrays), "metrics": MetricRecord({"num-examples": weight})})
    return Message(content, dst_node_id=0, message_type=MessageType.TRAIN)


@dataclass(frozen=True)
class UserLevelDP:
    """The user-level Gaussian mechanism's parameters for one run."""

    clipping_norm: float
    noise_multiplier: float
    expected_clients: float  # q * N


@dataclass(frozen=True)
class AggregationStats:
    clipped_fraction: float
    mean_update_norm: float


class RoundSum:
    """One round's client updates, folded in one at a time as replies arrive.

    Under user-level DP each update is clipped and added to a running sum at once and then dropped, so the server
    holds one model-sized sum rather than every reply of the round; without DP the updates are kept for the
    strategy (FedMedian and Krum need them all).
    """

    def __init__(self, current: Arrays, dp: UserLevelDP | None) -> None:
        self.current, self.dp = current, dp
        self.total = {k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()} if dp is not None else None
        self.kept: list[ClientUpdate] = []
        self.norms: list[float] = []
        self.clipped: list[bool] = []

    @property
    def count(self) -> int:
        """Updates folded in so far."""
        return len(self.norms)

    def add(self, update: ClientUpdate) -> None:
        delta = {k: update.arrays[k] - self.current[k] for k in self.current}
        if self.total is None:
            self.norms.append(global_norm(delta))
            self.clipped.append(False)
            self.kept.append(update)
            return
        clipped, norm, was_clipped = clip_update(delta, self.dp.clipping_norm)  # type: ignore[union-attr]
        for k in self.total:
            self.total[k] += clipped[k]
        self.norms.append(norm)
        self.clipped.append(was_clipped)

    def release(self, strategy: FedAvg, server_round: int, rng: np.random.Generator) -> tuple[Arrays, AggregationStats]:
        """The next global arrays. With DP the noisy mean is released even for zero updates (the accountant
        counts every round); without it, a round with no updates leaves the model unchanged."""
        current, dp = self.current, self.dp
        if self.total is not None and dp is not None:
            noisy = add_gaussian_noise(self.total, dp.noise_multiplier * dp.clipping_norm, rng)
            mean = {k: current[k] + noisy[k] / dp.expected_clients for k in current}
            replies = [_pseudo_reply(mean, 1.0)]
        else:
            replies = [_pseudo_reply(u.arrays, float(u.metrics["num-examples"])) for u in self.kept]
        stats = AggregationStats(
            clipped_fraction=float(np.mean(self.clipped)) if self.clipped else 0.0,
            mean_update_norm=float(np.mean(self.norms)) if self.norms else 0.0,
        )
        if not replies:
            return current, stats
        if isinstance(strategy, FedAdam):
            strategy.current_arrays = current  # what FedOpt.configure_train would have recorded
        new, _ = strategy.aggregate_train(server_round, replies)
        if new is None:
            return current, stats
        return {k: v.astype(np.float32) for k, v in from_array_record(new).items()}, stats


def aggregate(
    strategy: FedAvg,
    server_round: int,
    current: Arrays,
    updates: list[ClientUpdate],
    *,
    dp: UserLevelDP | None,
    rng: np.random.Generator,
) -> tuple[Arrays, AggregationStats]:
    """The next global arrays from a whole round's updates at once (see ``RoundSum``)."""
    round_sum = RoundSum(current, dp)
    for update in updates:
        round_sum.add(update)
    return round_sum.release(strategy, server_round, rng)
