"""DP-FedAvg rounds in one process: the federated run's own round, its transport a call instead of a Message.

Each round is ``server.round.FederatedRound``, the round ``server.federation.FederatedRun`` plays over a Flower grid:
every user sampled independently with probability q (Poisson sampling), the round's instructions, each sampled
user's reply aggregated through the run's one user-level mechanism (``privacy.user_level``: clip, sum, Gaussian
noise z*C from ``privacy.noise``'s source, divide by the expected count qN, record the release in the ledger; then
the Flower strategy's step). Only the transport differs: ``InProcessTransport`` runs the client's own
``client.local_update.local_updates`` on the users' examples, a batch of users trained together (user-level clipping
on the device, record-level DP-SGD when configured, each device keeping its own record-level ledger). The noise multiplier is calibrated once for the
planned rounds, as the Flower path does.

Used for the closed-loop experiment's periodic retraining on the logs the loop produced (Flower's simulated clients
read the synthetic population's own logs, not the loop's), the privacy audit, and, for small runs and tests, for
pre-training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from flwr.supercore.task_identity import TaskIdentity

from client.device_ledger import DeviceLedger
from client.local_update import LocalUpdate, local_updates
from client.secagg_client import distributed_share
from model.features.examples import Examples
from model.network.batched_training import USERS_PER_BATCH
from privacy.randomness import SEEDED_WARNING
from privacy.user_level import UserLevelMechanism
from protocol.instructions import DataInstructions, TrainInstructions
from protocol.reply_layout import STATISTICS_ARRAY
from server.aggregation import make_strategy, new_ledger, noise_multiplier_for, user_level_mechanism
from server.preflight import distributed_plan
from server.replies import Verdict
from server.round import FederatedRound, train_instructions
from server.secagg import SecureSum
from simulations.federation.noise_cohort import LABEL as NOISE_COHORT_LABEL
from simulations.federation.noise_cohort import NoiseCohort, NoiseCohortGaussian
from server.settings import RunSettings, bands_of

Arrays = dict[str, np.ndarray]
ExamplesOf = Callable[[int], Examples]
"""Returns the training examples of user ``i`` of the federation (0-based)."""


@contextmanager
def server_task_identity() -> Iterator[None]:
    """Let the server's aggregation build Flower messages outside a running ServerApp.

    ``server.aggregation`` hands the strategy ``Message`` objects, which Flower only builds when the process has a
    task identity (a running app sets it). Outside one, set the identity a ServerApp would have, then restore it.
    """
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    if saved[0] is None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 0, 0, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


class InProcessTransport:
    """A round's transport in this process: each sampled user's device is a call to the client's ``local_updates``.

    Args:
        num_users: the users sampled from (``0..num_users-1``).
        examples_of: each user's training examples this round.
        user_ids: the id under which user ``i``'s device trains (seeds its dropout and augmentation).
        device_ledgers: each device's record-level ledger, kept across rounds (filled as users are first drawn).
    """

    def __init__(self, num_users: int, examples_of: ExamplesOf, user_ids: Sequence[int],
                 device_ledgers: dict[int, DeviceLedger]) -> None:
        self.num_users, self.examples_of, self.user_ids = num_users, examples_of, user_ids
        self.device_ledgers = device_ledgers

    def candidates(self) -> Sequence[int]:
        return range(self.num_users)

    def reachable(self, chosen: list[int]) -> list[int]:
        return chosen  # a call is never busy

    def _local_updates(self, arrays: Arrays, instructions: TrainInstructions, users: list[int]) -> Iterator[LocalUpdate]:
        """Every sampled user's device trains: the one place the in-process round runs the clients. A batch of users
        at a time trains together (``local_updates``), so only that batch's examples are in memory."""
        for first in range(0, len(users), USERS_PER_BATCH):
            part = users[first : first + USERS_PER_BATCH]
            yield from local_updates(arrays, instructions, [self.examples_of(user) for user in part],
                                     [self.device_ledgers.setdefault(user, DeviceLedger(None)) for user in part],
                                     [self.user_ids[user] for user in part], simulated=True)

    def sum_shares(self, arrays: Arrays, instructions: TrainInstructions, users: list[int], modulus: int
                   ) -> tuple[np.ndarray | None, SecureSum]:
        """``privacy=distributed``: each user's device builds its noised share (``client.secagg_client``'s
        ``distributed_share``, the same code a SuperNode runs); their sum mod ``modulus`` is exactly what SecAgg+
        would unmask (the masks cancel mod 2**32, and m divides it). No masking runs here: this is the simulation's
        stand-in for the protocol, with the devices' own encoding and noise."""
        if len(users) < 2:
            return None, SecureSum(None, None, 0, len(users), halted=f"{len(users)} client(s) sampled: secure "
                                   "aggregation needs at least 2")
        names, total = list(arrays), None
        for update in self._local_updates(arrays, instructions, users):
            share = distributed_share({**update.update, STATISTICS_ARRAY: update.statistics}, names, instructions)
            share = share.astype(np.int64) + modulus // 2
            total = share if total is None else np.mod(total + share, modulus)
        return total, SecureSum(None, None, len(users), len(users))

    def train(self, server_round: int, arrays: Arrays, instructions: TrainInstructions,
              users: list[int]) -> Iterator[tuple[int, Verdict]]:
        """Each user's contribution under its id; nothing is encoded, so nothing needs decoding."""
        for user, update in zip(users, self._local_updates(arrays, instructions, users)):
            yield self.user_ids[user], Verdict("contribution", update=update.update, statistics=update.statistics)


class InProcessFederation:
    """A global model trained by DP-FedAvg rounds over ``num_users`` users.

    Args:
        run: the federated settings (model, local training, privacy, strategy, seed).
        arrays: the starting global weights.
        num_users: size of the federation (users ``0..num_users-1``).
        sample_rate: Poisson sampling rate q of each round.
        planned_rounds: rounds the user-level noise is calibrated for; the budget ``privacy.target_epsilon`` is
            spent over them.
        stream: distinguishes this federation's random streams (Poisson sampling ``[run.seed, stream, 0]``,
            server noise ``[run.seed, stream, 1]`` under ``privacy.noise=seeded``) from others of the same run seed.
        noise_multiplier: the user-level noise multiplier z, when the caller has already calibrated it (it must be
            the one ``privacy.accounting.calibrate_noise_multiplier`` gives for these settings, or the ledger's
            epsilon is not the budget's); None calibrates it here. Only under user-level DP.
        user_ids: the id under which user ``i``'s device trains (seeds its dropout and augmentation); None: ``i``.
        client_seed: the seed sent to the clients (``TrainInstructions.seed``); None: ``run.seed * 1000 + stream``.
        noise_cohort: the larger federation this one stands for (``simulations.federation.noise_cohort``): z is
            calibrated and the ledger kept at its q, the noise sized for its cohort; None: this federation itself.

    The expected count that divides the noisy sum is ``sample_rate * num_users``, fixed in advance as the
    accountant's mechanism needs. A user whose ``examples_of`` is empty declines when drawn and adds nothing.
    """

    def __init__(self, run: RunSettings, arrays: Arrays, *, num_users: int, sample_rate: float, planned_rounds: int,
                 stream: int, noise_multiplier: float | None = None, user_ids: Sequence[int] | None = None,
                 client_seed: int | None = None, noise_cohort: NoiseCohort | None = None) -> None:
        if num_users < 1 or planned_rounds < 1:
            raise ValueError(f"num_users and planned_rounds must be >= 1. Found {num_users}, {planned_rounds}.")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1]. Found {sample_rate}.")
        if noise_multiplier is not None and not (run.privacy.user_level and noise_multiplier > 0.0):
            raise ValueError("noise_multiplier must be > 0 and is only used under user-level DP (privacy.mode user "
                             f"or both). Found {noise_multiplier} with privacy.mode {run.privacy.mode!r}.")
        if user_ids is not None and len(user_ids) != num_users:
            raise ValueError(f"user_ids must name each of the {num_users} users once. Found {len(user_ids)} ids.")
        self.run, self.num_users, self.sample_rate, self.planned_rounds = run, num_users, sample_rate, planned_rounds
        self.arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
        self.ledger = new_ledger(run)
        self.rounds_done = 0
        self.stream = stream
        self.user_ids = list(range(num_users)) if user_ids is None else [int(i) for i in user_ids]
        self.client_seed = run.seed * 1000 + stream if client_seed is None else client_seed
        self._device_ledgers: dict[int, DeviceLedger] = {}
        if run.privacy.distributed and (sample_rate, planned_rounds) != (run.simulation.sample_rate, run.simulation.rounds):
            raise ValueError("privacy=distributed plans the devices' noise for simulation.sample_rate and "
                             f"simulation.rounds ({run.simulation.sample_rate}, {run.simulation.rounds}); found "
                             f"{sample_rate}, {planned_rounds}.")
        if run.privacy.banded and planned_rounds != run.simulation.rounds:
            raise ValueError("privacy.mechanism=bandmf factors the noise over simulation.rounds "
                             f"({run.simulation.rounds}); found {planned_rounds} planned rounds.")
        if run.privacy.distributed:
            self.noise_multiplier = distributed_plan(run, num_users).noise_multiplier
        else:
            self.noise_multiplier = noise_multiplier if noise_multiplier is not None else noise_multiplier_for(
                run.privacy, sample_rate=sample_rate, rounds=planned_rounds, bands=bands_of(run))
        self.noise_cohort = noise_cohort
        if noise_cohort is not None:  # z for the real cohort's q
            if run.privacy.mode != "user" or run.privacy.banded or run.privacy.clipping != "fixed":
                raise ValueError(f"a noise cohort simulates privacy=user with DP-FedAvg and fixed clipping; found "
                                 f"privacy.mode {run.privacy.mode!r}, mechanism {run.privacy.mechanism!r}, clipping "
                                 f"{run.privacy.clipping!r}.")
            self.noise_multiplier = noise_multiplier_for(run.privacy, sample_rate=noise_cohort.sample_rate,
                                                         rounds=planned_rounds)
        mechanism = user_level_mechanism(run, noise_multiplier=self.noise_multiplier, ledger=self.ledger,
                                         sample_rate=sample_rate, population=num_users, noise_seed=[run.seed, stream, 1])
        if noise_cohort is not None:  # the noise and the ledger of the real cohort, on this simulated one
            mechanism = NoiseCohortGaussian.standing_for(mechanism, noise_cohort)  # type: ignore[arg-type]
        self.federated_round = FederatedRound(make_strategy(run.strategy), mechanism, sample_rate=sample_rate,
                                              sampling_rng=np.random.default_rng([run.seed, stream, 0]))

    @property
    def mechanism(self) -> UserLevelMechanism:
        return self.federated_round.mechanism

    def _instructions(self) -> TrainInstructions:
        announced = {"noise_multiplier": self.noise_multiplier, "run_key": f"in-process-{self.stream}"
                     } if self.run.privacy.distributed else {}  # the noise multiplier each device holds its share to
        return train_instructions(self.run, self.rounds_done + 1, seed=self.client_seed,
                                  data=DataInstructions(window=self.run.population.window),
                                  clipping_norm=self.mechanism.clipping_norm, **announced)

    def round(self, examples_of: ExamplesOf) -> dict:
        """One round; returns its row (participants, mean loss, unclipped fraction, read from the release; clipping
        norm; epsilon so far)."""
        if self.rounds_done >= self.planned_rounds:
            raise RuntimeError(f"all {self.planned_rounds} planned rounds have run: the privacy budget is spent.")
        transport = InProcessTransport(self.num_users, examples_of, self.user_ids, self._device_ledgers)
        with server_task_identity():
            outcome = self.federated_round.play(self.rounds_done + 1, self.arrays, self._instructions(), transport)
        self.arrays = outcome.arrays
        self.rounds_done += 1
        statistics = outcome.statistics
        return {"round": self.rounds_done, "sampled": outcome.sampled, "replies": outcome.replies, "participants": statistics.participants,
                "train_loss": math.nan if statistics.mean_loss is None else statistics.mean_loss,
                "unclipped_fraction": statistics.unclipped_fraction, "clipping_norm": outcome.clipping_norm,
                "epsilon": self.epsilon()}

    def epsilon(self) -> float | None:
        """User-level epsilon spent so far (None without user-level DP)."""
        return self.mechanism.epsilon()

    def privacy_report(self) -> dict:
        """What ran, as data, and the epsilon it adds up to."""
        p = self.run.privacy
        return {
            "mode": p.mode, "mechanism": p.mechanism, "epsilon": self.epsilon(), "delta": p.delta if self.noise_multiplier is not None else None,
            "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
            "clipping_norm": p.clipping_norm if p.user_level else None, "clipping": p.clipping if p.user_level else None,
            "final_clipping_norm": self.mechanism.clipping_norm, "rounds": self.rounds_done,
            "planned_rounds": self.planned_rounds, "users": self.num_users, "accountant": p.accountant,
            "noise": p.noise, **({"warning": SEEDED_WARNING} if p.noise == "seeded" else {}),
            **({"bands": self.mechanism.bands, "max_participations": self.mechanism.max_participations,  # type: ignore[union-attr]
                "sample_rate": None} if p.banded and p.user_level else {}),
            **({"noise_cohort": {"label": NOISE_COHORT_LABEL, "population": self.noise_cohort.population,
                                 "sample_rate": self.noise_cohort.sample_rate,
                                 "simulated_users": self.num_users, "simulated_sample_rate": self.sample_rate}}
               if self.noise_cohort is not None else {}),
        }
