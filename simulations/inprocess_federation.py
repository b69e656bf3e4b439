"""DP-FedAvg rounds in one process: the federated training code path without Flower's messaging.

Each round samples every user independently with probability q (Poisson sampling), runs the client's own
``client.local_update.local_update`` on that user's examples (user-level clipping on the device, record-level DP-SGD
when configured, each device keeping its own record-level ledger), and aggregates with the server's
``server.aggregation.aggregate`` through the run's one user-level mechanism (``privacy.user_level``: clip, sum,
Gaussian noise z*C from ``privacy.noise``'s source, divide by the expected count qN, record the release in the
ledger; then the Flower strategy's step). The noise multiplier is calibrated once for the planned rounds, exactly as
``server.federation.FederatedRun`` does over a Flower grid.

Used for the closed-loop experiment's periodic retraining on the logs the loop produced (Flower's simulated clients
read the synthetic population's own logs, not the loop's) and, for small runs and tests, for pre-training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from flwr.supercore.task_identity import TaskIdentity

from client.device_ledger import DeviceLedger
from client.instructions import DataInstructions, RecordLevelInstructions, TrainInstructions
from client.local_update import local_update
from model.encoding import Examples
from privacy.accounting import PrivacyLedger, calibrate_noise_multiplier
from privacy.randomness import SEEDED_WARNING
from server.aggregation import aggregate, make_strategy, user_level_mechanism
from server.replies import ClientUpdate
from server.settings import RunSettings

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

    The expected count that divides the noisy sum is ``sample_rate * num_users``, fixed in advance as the
    accountant's mechanism needs. A user whose ``examples_of`` is empty declines when drawn and adds nothing.
    """

    def __init__(self, run: RunSettings, arrays: Arrays, *, num_users: int, sample_rate: float, planned_rounds: int,
                 stream: int, noise_multiplier: float | None = None, user_ids: Sequence[int] | None = None,
                 client_seed: int | None = None) -> None:
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
        self.strategy = make_strategy(run.strategy)
        self.ledger = PrivacyLedger()
        self.rounds_done = 0
        self.stream = stream
        self.user_ids = list(range(num_users)) if user_ids is None else [int(i) for i in user_ids]
        self.client_seed = run.seed * 1000 + stream if client_seed is None else client_seed
        self._sampling = np.random.default_rng([run.seed, stream, 0])
        self._device_ledgers: dict[int, DeviceLedger] = {}
        privacy = run.privacy
        self.noise_multiplier: float | None = noise_multiplier
        if privacy.user_level and noise_multiplier is None:
            self.noise_multiplier = calibrate_noise_multiplier(
                target_epsilon=privacy.target_epsilon, delta=privacy.delta, sample_rate=sample_rate,  # type: ignore[arg-type]
                steps=planned_rounds, accountant=privacy.accountant,
            )
        self.mechanism = user_level_mechanism(run, noise_multiplier=self.noise_multiplier, ledger=self.ledger,
                                              sample_rate=sample_rate, population=num_users,
                                              noise_seed=[run.seed, stream, 1])

    def _instructions(self) -> TrainInstructions:
        p = self.run.privacy
        record = None
        if p.record_level and p.record is not None:
            record = RecordLevelInstructions(p.record.noise_multiplier, p.record.max_grad_norm, p.record.target_epsilon,
                                             p.record.delta)
        return TrainInstructions(
            round=self.rounds_done + 1, seed=self.client_seed, model=self.run.model,
            train=self.run.train, data=DataInstructions(window=self.run.population.window),
            clipping_norm=p.clipping_norm if p.user_level else None, record=record, noise=p.noise,
        )

    def round(self, examples_of: ExamplesOf) -> dict:
        """One round; returns its row (clients, mean loss, clipped fraction, epsilon so far)."""
        if self.rounds_done >= self.planned_rounds:
            raise RuntimeError(f"all {self.planned_rounds} planned rounds have run: the privacy budget is spent.")
        chosen = np.flatnonzero(self._sampling.random(self.num_users) < self.sample_rate)
        instructions = self._instructions()
        updates: list[ClientUpdate] = []
        for user in chosen.tolist():
            ledger = self._device_ledgers.setdefault(user, DeviceLedger(None))
            update = local_update(self.arrays, instructions, examples_of(user), ledger, self.user_ids[user],
                                  simulated=True)
            if not update.declined:
                updates.append(ClientUpdate(self.user_ids[user], update.arrays, update.metrics))
        with server_task_identity():
            self.arrays, stats = aggregate(self.strategy, self.rounds_done + 1, self.arrays, updates,
                                           mechanism=self.mechanism)
        self.rounds_done += 1
        examples = sum(u.metrics["num-examples"] for u in updates)
        loss = sum(u.metrics["train-loss"] * u.metrics["num-examples"] for u in updates) / examples if examples else math.nan
        return {"round": self.rounds_done, "sampled": int(len(chosen)), "clients": len(updates), "train_loss": loss,
                "clipped_fraction": stats.clipped_fraction, "epsilon": self.epsilon()}

    def epsilon(self) -> float | None:
        """User-level epsilon spent so far (None without user-level DP)."""
        return self.mechanism.epsilon()

    def privacy_report(self) -> dict:
        """What ran, as data, and the epsilon it adds up to."""
        p = self.run.privacy
        return {
            "mode": p.mode, "epsilon": self.epsilon(), "delta": p.delta if self.noise_multiplier is not None else None,
            "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
            "clipping_norm": p.clipping_norm if p.user_level else None, "rounds": self.rounds_done,
            "planned_rounds": self.planned_rounds, "users": self.num_users, "accountant": p.accountant,
            "noise": p.noise, **({"warning": SEEDED_WARNING} if p.noise == "seeded" else {}),
        }
