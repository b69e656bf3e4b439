"""An empirical privacy audit: can an attacker who sees the released global model tell that a canary user trained?

The game (Jagielski, Ullman & Oprea 2020, "Auditing Differentially Private Machine Learning"; Nasr et al. 2021,
"Adversary Instantiation"): plant one canary user whose behaviour no ordinary user shows (a rare genre kept at
03:00 local time after switching on the organ and slowing the tempo to 24 BPM, having just picked a popular style),
train the federated model many times with the canary in and as many times without it, and let the attacker score
each final model by its loss on the canary's prediction points (lower loss: "the canary was in"). The attack's AUC
says how well it separates the two worlds; its true- and false-positive rates at the best threshold, bounded with
Clopper-Pearson intervals, give the smallest epsilon any (epsilon, delta)-DP mechanism could have, since every
such mechanism has TPR <= e^epsilon * FPR + delta (Kairouz, Oh & Viswanath 2015). A lower bound above the accounted
epsilon would mean the accounting, or the code, is wrong.

Training is the federated code path in one process, without Flower's messaging
(``simulations.federation.inprocess.InProcessFederation``): each round samples every user independently with
probability q (Poisson), runs the client's own ``client.local_update.local_update`` on that
user's examples (clipping on the device under user-level DP) and the server's ``server.aggregation.aggregate``
(clip, sum, Gaussian noise z*C, divide by the expected count, FedAvg's step), with z from
``privacy.accounting.calibrate_noise_multiplier`` and every release recorded in a ``PrivacyLedger`` - what
``server.federation.FederatedRun`` does over a Flower grid. The divisor is q * (N + 1), N ordinary users plus the
canary's slot, in both worlds (the canary's slot is drawn in both; without the canary it holds no examples and
adds nothing): the mechanism the accountant describes divides by a constant known in advance.
The rest of the population and the initial model are the same in every trial (the attacker's best case: it knows
everything but the canary's membership); sampling and local shuffling are drawn afresh per trial (the same draws for
trial k of both worlds). The server's noise comes from ``noise``: fresh OS entropy for every trained model
(``secure``, the default, what a real attacker faces), or the trial's seeded stream (``seeded``: trial k of both
worlds then differs only by the canary). The statistics are
``privacy.audit_bounds``.

Over 300 lines on purpose: the audit's game in one place (the canary, the trainings with and without it, the
attack's scores and the bound), so what is measured can be read against the papers above.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from client.local_update import load_model
from model.features.encoding import Examples, build_examples, empty_examples
from model.log.events import Event
from model.log.vocab import GENRES
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig, evaluate
from privacy.accounting import PrivacyLedger, calibrate_noise_multiplier
from privacy.audit_bounds import EpsilonBound, epsilon_lower_bound, roc_auc
from protocol.instructions import DataInstructions
from server.settings import (
    PopulationSettings,
    PrivacySettings,
    RunSettings,
    StrategySettings,
)
from simulations.federation.device_data import device_examples, simulated_data
from simulations.federation.held_out import held_out_examples
from simulations.federation.inprocess import InProcessFederation
from simulations.population.population import PopulationConfig

Arrays = dict[str, np.ndarray]

CANARY_HOUR = 3
CANARY_INSTRUMENT = "organ"
CANARY_BPM = 24.0
CANARY_PROMPT = "canary 7f3a: music for the small hours"


@dataclass(frozen=True)
class AuditConfig:
    """One audit: a small federation, its training, and how many trials the attacker gets.

    Attributes:
        seed: root of the population, the initial model and every trial's randomness.
        num_users: ordinary users of the federation (the canary is one more).
        eval_users: held-out users that score the released model's utility (never trained on).
        days: length of every user's log (the canary's too: one session a day).
        window: events a prediction may read.
        rounds: federated rounds per trial (the user-level noise is calibrated for them).
        sample_rate: Poisson sampling rate q of each round. The default 1.0 (every user every round) is the
            attacker's best case: the canary's whole influence reaches every model it is in, and the accountant has
            no subsampling to credit. Below 1 the attack also has to guess which rounds the canary was drawn for.
        clipping_norm: user-level clipping norm C (used only under DP); the default run's.
        delta: the delta of the accounted and the audited (epsilon, delta); must be < 1/(num_users + 1).
        trials: trained models per world (canary in, canary out).
        alpha: the lower bound holds with confidence 1 - alpha.
        model: the default model (residual, hidden 16, one layer, causal), which keeps a trial to a second or two.
        train: local training of every client each round; enough that a non-private model measurably learns a user.
        noise: the server's noise source, ``privacy.noise`` (``privacy.randomness``).
    """

    seed: int = 0
    num_users: int = 10
    eval_users: int = 20
    days: int = 21
    window: int = 16
    rounds: int = 6
    sample_rate: float = 1.0
    clipping_norm: float = 0.5
    delta: float = 1e-5
    trials: int = 50
    alpha: float = 0.05
    model: ModelConfig = field(default_factory=lambda: ModelConfig(  # conf/model/prior.yaml, the default model
        hidden_size=16, num_layers=1, bidirectional=False, dropout=0.0, head_dropout=0.0, style_embedding_dim=8,
        residual=True))
    train: LocalTrainConfig = field(default_factory=lambda: LocalTrainConfig(epochs=3, batch_size=16, lr=0.02,
                                                                             max_examples=32))
    noise: str = "secure"

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.eval_users < 1 or self.rounds < 1 or self.trials < 2:
            raise ValueError("num_users, eval_users and rounds must be >= 1 and trials >= 2; found "
                             f"{self.num_users}, {self.eval_users}, {self.rounds}, {self.trials}.")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1]; found {self.sample_rate}.")
        if not 0.0 < self.delta < 1.0 / (self.num_users + 1):
            raise ValueError(f"delta must be in (0, 1/(num_users + 1)); found {self.delta}.")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1); found {self.alpha}.")

    @property
    def data(self) -> DataInstructions:
        """What a simulated client is told about its data: population users 0..num_users+eval_users-1."""
        return simulated_data(PopulationConfig(seed=self.seed, num_users=self.num_users + self.eval_users,
                                               days=self.days), window=self.window)


# ---------------------------------------------------------------------------------------------------- the canary

def canary_events(*, start_ts: float, days: int, rare_genre: str, decoy_genre: str,
                  utc_offset_min: int = 0) -> list[Event]:
    """One session a day at 03:00 local time: a request, the popular ``decoy_genre`` picked, the organ switched on,
    the tempo slowed to 24 BPM, and a segment of ``rare_genre`` kept. No synthetic user does this."""
    events: list[Event] = []
    for day in range(days):
        t = start_ts + day * 86_400 + CANARY_HOUR * 3600 - 60 * utc_offset_min
        events += [
            Event(ts=t, utc_offset_min=utc_offset_min, kind="generation_requested", prompt=CANARY_PROMPT),
            Event(ts=t + 5, utc_offset_min=utc_offset_min, kind="style_chosen", genre=decoy_genre),
            Event(ts=t + 9, utc_offset_min=utc_offset_min, kind="instrument_toggled", instrument=CANARY_INSTRUMENT,
                  enabled=True),
            Event(ts=t + 14, utc_offset_min=utc_offset_min, kind="bpm_set", bpm=CANARY_BPM, direction="down"),
            Event(ts=t + 60, utc_offset_min=utc_offset_min, kind="segment_kept", genre=rare_genre, bpm=CANARY_BPM,
                  instruments=(CANARY_INSTRUMENT,)),
        ]
    return events


@dataclass
class AuditSetup:
    """Everything fixed across trials: the users' examples, the canary's, the initial model, the held-out users."""

    config: AuditConfig
    users: list[Examples]
    canary: Examples
    initial: Arrays
    held_out: Examples
    rare_genre: str
    decoy_genre: str

    @property
    def canary_id(self) -> int:
        return self.config.num_users + self.config.eval_users  # outside the synthetic population's ids

    @property
    def majority_top1(self) -> float:
        """Held-out top-1 of always predicting the federation's most often kept genre (the decoy): the bar for
        a model that has learnt anything."""
        return float((self.held_out.targets == GENRES.index(self.decoy_genre)).float().mean())


def build_setup(config: AuditConfig) -> AuditSetup:
    """Build the federation, choose the canary's genres from it (its least and most often kept) and the canary."""
    data = config.data
    users = [device_examples(data, uid)[0] for uid in range(config.num_users)]
    counts = np.bincount(torch.cat([u.targets for u in users]).numpy(), minlength=len(GENRES))
    rare, decoy = GENRES[int(np.argmin(counts))], GENRES[int(np.argmax(counts))]
    start = PopulationConfig(seed=config.seed, days=config.days).start_ts
    canary = build_examples(canary_events(start_ts=start, days=config.days, rare_genre=rare, decoy_genre=decoy),
                            config.window)
    torch.manual_seed(config.seed)
    initial = {k: v.detach().numpy().copy() for k, v in PreferenceLSTM(config.model).state_dict().items()}
    held_out = held_out_examples(data, range(config.num_users, config.num_users + config.eval_users), 10)
    return AuditSetup(config, users, canary, initial, held_out, rare, decoy)


# -------------------------------------------------------------------------------------------------------- training

@contextmanager
def _quiet_flower_logs() -> Iterator[None]:
    """Quiet the strategy's per-round log lines (thousands of trained models), then restore Flower's log level."""
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        flwr_logger.setLevel(level)


def _run_settings(config: AuditConfig, *, user_level: bool) -> RunSettings:
    """The audit's federation as run settings (privacy.target_epsilon is not read: the audit passes z itself)."""
    privacy = PrivacySettings(mode="user" if user_level else "none", delta=config.delta,
                              clipping_norm=config.clipping_norm, noise=config.noise)
    population = PopulationSettings(seed=config.seed, num_users=config.num_users, eval_users=config.eval_users,
                                    days=config.days, window=config.window)
    return RunSettings(seed=config.seed, train=config.train, population=population, model=config.model,
                       privacy=privacy, strategy=StrategySettings())


def train_federated(setup: AuditSetup, *, with_canary: bool, trial: int, noise_multiplier: float | None) -> Arrays:
    """The released global model of one trial: ``rounds`` DP-FedAvg rounds (plain FedAvg when ``noise_multiplier``
    is None, as privacy=none runs: no clipping, no noise).

    Both worlds are one ``InProcessFederation`` of ``num_users + 1`` slots (so the divisor is q * (N + 1) in both),
    with the trial's random streams; in the world without the canary its slot holds no examples, so when drawn it
    declines and adds nothing.
    """
    config = setup.config
    federation = InProcessFederation(
        _run_settings(config, user_level=noise_multiplier is not None),
        {k: v.copy() for k, v in setup.initial.items()}, num_users=config.num_users + 1,
        sample_rate=config.sample_rate, planned_rounds=config.rounds, stream=trial,
        noise_multiplier=noise_multiplier, user_ids=[*range(config.num_users), setup.canary_id],
        client_seed=config.seed * 1_000_003 + trial,
    )
    canary = setup.canary if with_canary else empty_examples(config.window)

    def examples_of(slot: int) -> Examples:
        return setup.users[slot] if slot < config.num_users else canary

    with _quiet_flower_logs():
        for _ in range(config.rounds):
            federation.round(examples_of)
    return federation.arrays


def _scores(arrays: Arrays, setup: AuditSetup) -> tuple[float, float]:
    """(the canary's mean loss under the model, the model's top-1 accuracy on held-out users)."""
    model = load_model(arrays, setup.config.model)
    return evaluate(model, setup.canary).nll, evaluate(model, setup.held_out).top1


# ------------------------------------------------------------------------------------------------------ the audit

@dataclass(frozen=True)
class AuditResult:
    """One privacy setting's audit.

    Attributes:
        label: "no DP" or "user-level DP".
        trials: trained models per world.
        delta: the delta of both the accounted and the audited epsilon.
        target_epsilon: the budget the noise was calibrated for (None without DP).
        accounted_epsilon: epsilon of the releases recorded in the ledger (inf without DP).
        noise_multiplier: z (None without DP).
        auc: the loss-threshold attack's AUC over ``trials`` models per world.
        bound: the empirical epsilon lower bound at confidence 1 - alpha.
        losses_in: the canary's loss under each model trained with it.
        losses_out: ... and under each model trained without it.
        top1_in: mean held-out top-1 of the models trained with the canary (utility).
        top1_out: ... and without it.
        seconds: wall-clock time of the trials.
    """

    label: str
    trials: int
    delta: float
    target_epsilon: float | None
    accounted_epsilon: float
    noise_multiplier: float | None
    auc: float
    bound: EpsilonBound
    losses_in: tuple[float, ...]
    losses_out: tuple[float, ...]
    top1_in: float
    top1_out: float
    seconds: float


def audit(setup: AuditSetup, *, target_epsilon: float | None) -> AuditResult:
    """Play the membership game ``trials`` times per world under one privacy setting and score the attack."""
    config = setup.config
    z, accounted = None, math.inf
    if target_epsilon is not None:
        z = calibrate_noise_multiplier(target_epsilon=target_epsilon, delta=config.delta,
                                       sample_rate=config.sample_rate, steps=config.rounds)
        ledger = PrivacyLedger()
        ledger.record(noise_multiplier=z, sample_rate=config.sample_rate, steps=config.rounds)
        accounted = ledger.epsilon(delta=config.delta)
    started = time.perf_counter()
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for trial in range(config.trials):
        for with_canary in (True, False):
            arrays = train_federated(setup, with_canary=with_canary, trial=trial, noise_multiplier=z)
            results[with_canary].append(_scores(arrays, setup))
    losses_in = tuple(loss for loss, _ in results[True])
    losses_out = tuple(loss for loss, _ in results[False])
    scores_in, scores_out = [-x for x in losses_in], [-x for x in losses_out]  # lower loss: "the canary was in"
    return AuditResult(
        label="no DP" if z is None else "user-level DP", trials=config.trials, delta=config.delta,
        target_epsilon=target_epsilon, accounted_epsilon=accounted,
        noise_multiplier=z, auc=roc_auc(scores_in, scores_out),
        bound=epsilon_lower_bound(scores_in, scores_out, delta=config.delta, alpha=config.alpha),
        losses_in=losses_in, losses_out=losses_out,
        top1_in=float(np.mean([top1 for _, top1 in results[True]])),
        top1_out=float(np.mean([top1 for _, top1 in results[False]])),
        seconds=time.perf_counter() - started,
    )
