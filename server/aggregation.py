"""Turning one round's contributions into the next global prior.

Flower's strategies do the server-side step (FedAvg's mean, FedAdam's adaptive step, FedMedian, FedTrimmedAvg,
Krum). Under user-level DP they receive, instead of the client models, one pseudo-reply carrying
``global + noisy mean update`` from the run's ``privacy.user_level.UserLevelGaussian`` (bound, sum, noise z*S,
divide by the expected count qN); the strategy's step is post-processing and costs no privacy. Without user-level
DP, ``privacy.user_level.NoUserLevelPrivacy`` hands the strategy every participant's update, each of weight 1 (no
device says how many examples it has).
"""

from __future__ import annotations


import numpy as np
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Krum

from privacy.accounting import PrivacyLedger, calibrate_noise_multiplier
from privacy.adaptive_clipping import AdaptiveClipping
from privacy.banded_release import BandedMatrixGaussian, banded_noise_multiplier
from privacy.contribution import ReleasedStatistics
from privacy.distributed_release import DistributedLedger, DistributedRelease
from privacy.randomness import gaussian_noise
from privacy.user_level import NoUserLevelPrivacy, UserLevelGaussian, UserLevelMechanism
from protocol.records import from_array_record, to_array_record
from server.preflight import distributed_plan
from server.replies import Contribution
from server.settings import PrivacySettings, RunSettings, StrategySettings, bands_of

Arrays = dict[str, np.ndarray]


def make_strategy(settings: StrategySettings) -> FedAvg:
    """The Flower strategy named in config; only its ``aggregate_train`` is used (we sample and send ourselves)."""
    never_wait = dict(fraction_train=1.0, fraction_evaluate=1.0, min_train_nodes=0, min_evaluate_nodes=0, min_available_nodes=0)
    if settings.name == "fedavg":  # FedAvgM is FedAvg with a server step size and (heavy-ball) momentum
        return FedAvgM(**never_wait, server_learning_rate=settings.server_lr, server_momentum=settings.momentum)
    if settings.name == "fedadam":
        return FedAdam(**never_wait, eta=settings.server_lr, beta_1=settings.beta_1, beta_2=settings.beta_2, tau=settings.tau)
    if settings.name == "fedmedian":
        return FedMedian(**never_wait)
    if settings.name == "krum":
        return Krum(**never_wait, num_malicious_nodes=settings.num_malicious_nodes)
    return FedTrimmedAvg(**never_wait, beta=settings.beta)


def strategy_state(strategy: FedAvg) -> dict[str, dict[str, np.ndarray]]:
    """What a strategy carries between rounds, as named arrays for checkpoints: FedAdam's moments ``m_t``, ``v_t``
    (already named) and FedAvgM's ``momentum_vector`` (a list in model order, named by position)."""
    state = {name: getattr(strategy, name) for name in ("m_t", "v_t") if getattr(strategy, name, None) is not None}
    momentum = getattr(strategy, "momentum_vector", None)
    if momentum is not None:
        state["momentum_vector"] = {str(i): np.asarray(array) for i, array in enumerate(momentum)}
    return state


def load_strategy_state(strategy: FedAvg, state: dict[str, dict[str, np.ndarray]]) -> None:
    for name, value in state.items():
        if name == "momentum_vector":
            value = [value[str(i)] for i in range(len(value))]  # type: ignore[assignment]
        setattr(strategy, name, value)


def _pseudo_reply(arrays: Arrays, weight: float) -> Message:
    content = RecordDict({"arrays": to_array_record(arrays), "metrics": MetricRecord({"num-examples": weight})})
    return Message(content, dst_node_id=0, message_type=MessageType.TRAIN)


def new_ledger(settings: RunSettings) -> PrivacyLedger | DistributedLedger:
    """An empty ledger of the kind the run's mechanism records in."""
    return DistributedLedger() if settings.privacy.distributed else PrivacyLedger()


def noise_multiplier_for(privacy: PrivacySettings, *, sample_rate: float, rounds: int,
                         evaluation_rate: float | None = None, bands: int | None = None) -> float | None:
    """The user-level noise multiplier z that spends ``privacy.target_epsilon`` over ``rounds`` releases at
    ``sample_rate`` and, with ``evaluation_rate``, the devices' federated evaluation (one release at that rate),
    calibrated once for the whole run; under ``privacy.mechanism=bandmf``, over the ceil(rounds / ``bands``) rounds a
    device can join, unamplified (``privacy.banded_release``). None without user-level DP."""
    if not privacy.user_level:
        return None
    if privacy.banded:
        if bands is None:
            raise ValueError("privacy.mechanism=bandmf: the noise multiplier needs the run's bands (bands_of).")
        return banded_noise_multiplier(target_epsilon=privacy.target_epsilon, delta=privacy.delta, rounds=rounds,  # type: ignore[arg-type]
                                       bands=bands, accountant=privacy.accountant, evaluation=bool(evaluation_rate))
    return calibrate_noise_multiplier(target_epsilon=privacy.target_epsilon, delta=privacy.delta,  # type: ignore[arg-type]
                                      sample_rate=sample_rate, steps=rounds, accountant=privacy.accountant,
                                      also=[(evaluation_rate, 1)] if evaluation_rate else [])


def user_level_mechanism(settings: RunSettings, *, noise_multiplier: float | None, ledger: PrivacyLedger,
                         sample_rate: float, population: int, noise_seed: list[int],
                         clipping_norm: float | None = None) -> UserLevelMechanism:
    """The run's user-level mechanism: the Gaussian one under ``privacy.mode`` user or both, else no privacy.

    ``noise_seed`` keys the noise only under ``privacy.noise: seeded``; ``secure`` draws from the OS at each release.
    ``clipping_norm``: the clipping norm to start from (a resumed run's, under adaptive clipping); None:
    ``privacy.clipping_norm``.
    """
    p = settings.privacy
    if not p.user_level:
        return NoUserLevelPrivacy()
    if p.distributed:
        return DistributedRelease(distributed_plan(settings, population), p.clipping_norm, sample_rate, population,  # type: ignore[arg-type]
                                  ledger, p.delta, p.target_epsilon)  # type: ignore[arg-type]
    adaptive = AdaptiveClipping(p.clipping_quantile, p.clipping_learning_rate) if p.clipping == "adaptive" else None
    if p.banded:
        return BandedMatrixGaussian(
            bands=bands_of(settings), rounds=settings.simulation.rounds, clipping_norm=p.clipping_norm,  # type: ignore[arg-type]
            noise_multiplier=noise_multiplier, sample_rate=sample_rate, population=population,
            noise=gaussian_noise(p.noise, noise_seed), ledger=ledger, delta=p.delta, accountant=p.accountant,
            target_epsilon=p.target_epsilon)
    return UserLevelGaussian(
        clipping_norm=clipping_norm or p.clipping_norm, noise_multiplier=noise_multiplier, sample_rate=sample_rate,  # type: ignore[arg-type]
        population=population, noise=gaussian_noise(p.noise, noise_seed), ledger=ledger, delta=p.delta,
        accountant=p.accountant, target_epsilon=p.target_epsilon, adaptive=adaptive,
    )


class RoundSum:
    """One round's contributions, folded in one at a time as replies arrive (see ``privacy.user_level``): under
    user-level DP each is bounded into a running sum at once and dropped, so the server holds one model-sized sum
    rather than every reply of the round."""

    def __init__(self, current: Arrays, mechanism: UserLevelMechanism) -> None:
        self.current = current
        self.accumulator = mechanism.open_round(current)

    @property
    def count(self) -> int:
        """Contributions folded in so far."""
        return self.accumulator.count

    def add(self, update: Arrays, statistics: np.ndarray) -> bool:
        """One device's update (new weights minus the global model) and its statistics' coordinates; False when it
        was not folded in (not finite once bounded)."""
        return self.accumulator.add(update, statistics)

    def release(self, strategy: FedAvg, server_round: int) -> tuple[Arrays, ReleasedStatistics, str | None]:
        """(the next global arrays, the round's statistics, why the model was kept as it was or None). Under
        user-level DP the noisy mean is released even for zero contributions (the accountant counts every round);
        without it, a round with no update leaves the model unchanged."""
        release = self.accumulator.release()
        arrays, refused = strategy_step(strategy, server_round, self.current, release.updates)
        return arrays, release.statistics, refused


def strategy_step(strategy: FedAvg, server_round: int, current: Arrays,
                  updates: list[tuple[Arrays, float]]) -> tuple[Arrays, str | None]:
    """The Flower strategy's step from ``current`` given ``updates`` (each a delta with its weight): (the next
    arrays, None), or (``current``, why) when there is nothing to aggregate or the step is not finite (a release is
    never a model of NaN or Inf: the strategy's arithmetic on huge but finite updates could overflow)."""
    if not updates:
        return current, None
    replies = [_pseudo_reply({k: current[k] + update[k] for k in current}, weight) for update, weight in updates]
    if isinstance(strategy, FedAdam):
        strategy.current_arrays = current  # what FedOpt.configure_train would have recorded
    elif isinstance(strategy, FedAvgM):
        strategy.current_arrays = to_array_record(current)  # what FedAvgM.configure_train would have recorded
    new, _ = strategy.aggregate_train(server_round, replies)
    if new is None:
        return current, None
    arrays = {k: v.astype(np.float32) for k, v in from_array_record(new).items()}
    if not all(np.all(np.isfinite(v)) for v in arrays.values()):
        return current, "the aggregate is not finite: the model is kept as it was"
    return arrays, None


def aggregate(strategy: FedAvg, server_round: int, current: Arrays, contributions: list[Contribution], *,
              mechanism: UserLevelMechanism) -> tuple[Arrays, ReleasedStatistics]:
    """The next global arrays from a whole round's contributions at once (see ``RoundSum``)."""
    round_sum = RoundSum(current, mechanism)
    for contribution in contributions:
        round_sum.add(contribution.update, contribution.statistics)
    arrays, statistics, _ = round_sum.release(strategy, server_round)
    return arrays, statistics
