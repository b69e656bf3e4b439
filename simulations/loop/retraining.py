"""Periodic retraining of a policy's model from the logs the closed loop produced.

SEED.md's loop fine-tunes the LSTM periodically. Two ways, matching the two personalised policies:

* ``FederatedRetrainer``: DP-FedAvg rounds over the experiment's users, each training on its own log
  (``simulations.federation.inprocess``); the user-level noise is calibrated once for every planned round of the
  experiment, so the reported epsilon covers everything released from these users' logs;
* ``CentralRetrainer``: the non-private reference: a server that sees all logs fine-tunes on the examples logged
  since its previous retraining, pooled.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch

from model.features.examples import Examples, build_examples
from model.log.events import Event
from model.network.networks import PreferenceLSTM
from model.network.training import train_local
from server.settings import RunSettings
from simulations.federation.inprocess import InProcessFederation
from simulations.loop.pretraining import CENTRAL_BATCH_SIZE, CENTRAL_LR
from simulations.loop.experiment_settings import RetrainSettings

Arrays = dict[str, np.ndarray]
RETRAIN_STREAM = 2


def examples_since(log: Sequence[Event], cutoff_ts: float, window: int) -> Examples:
    """Prediction examples of ``log`` whose request came after ``cutoff_ts``, each with its full window.

    Encodes only the tail of the log that those windows read, not the whole history.
    """
    first_new = bisect.bisect_right([e.ts for e in log], cutoff_ts)
    tail = log[max(0, first_new - window):]
    examples = build_examples(tail, window)
    keep = torch.nonzero(examples.times > cutoff_ts).squeeze(1)
    return examples.subset(keep)


class FederatedRetrainer:
    """DP-FedAvg fine-tuning over the experiment's users.

    Args:
        run: federated settings (model, local training, privacy, strategy).
        arrays: the pre-trained global weights.
        num_users: the experiment's users (the retraining federation).
        retrain: rounds and sampling rate per retraining.
        planned_retrainings: how many retrainings the experiment will run (the noise is calibrated for all).
    """

    def __init__(self, run: RunSettings, arrays: Arrays, *, num_users: int, retrain: RetrainSettings,
                 planned_retrainings: int) -> None:
        self.retrain_settings = retrain
        self.window = run.population.window
        self.federation = InProcessFederation(run, arrays, num_users=num_users, sample_rate=retrain.sample_rate,
                                              planned_rounds=max(1, planned_retrainings * retrain.rounds),
                                              stream=RETRAIN_STREAM)

    def retrain(self, logs: Sequence[Sequence[Event]]) -> tuple[Arrays, str]:
        """New global weights after ``retrain.rounds`` rounds on ``logs`` (one per user), and a progress note."""
        started = time.perf_counter()
        rows = [self.federation.round(lambda user: build_examples(logs[user], self.window))
                for _ in range(self.retrain_settings.rounds)]
        clients = sum(r["replies"] for r in rows)
        eps = self.federation.epsilon()
        eps_text = f", user-level ε so far {eps:.2f}" if eps is not None else ""
        return self.federation.arrays, (f"DP-FedAvg {len(rows)} round(s), {clients} client updates{eps_text}, "
                                        f"{time.perf_counter() - started:.0f} s")

    def report(self) -> dict:
        return self.federation.privacy_report()


class CentralRetrainer:
    """Non-private fine-tuning on every user's examples logged since the last retraining."""

    def __init__(self, run: RunSettings, arrays: Arrays, *, retrain: RetrainSettings) -> None:
        self.run = run
        self.arrays = arrays
        self.config = dataclasses.replace(run.train, epochs=retrain.central_epochs, batch_size=CENTRAL_BATCH_SIZE,
                                          lr=CENTRAL_LR, max_examples=0)
        self.cutoff_ts = -np.inf
        self.retrainings = 0
        self.examples_seen = 0

    def retrain(self, logs: Sequence[Sequence[Event]]) -> tuple[Arrays, str]:
        started = time.perf_counter()
        window = self.run.population.window
        fresh = Examples.concat([examples_since(log, self.cutoff_ts, window) for log in logs], window)
        self.cutoff_ts = max((log[-1].ts for log in logs if log), default=self.cutoff_ts)
        self.retrainings += 1
        if len(fresh) == 0:
            return self.arrays, "no new examples"
        seed = self.run.seed * 1000 + RETRAIN_STREAM * 100 + self.retrainings
        torch.manual_seed(seed)
        model = PreferenceLSTM(self.run.model)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.arrays.items()})
        train_local(model, fresh, self.config, generator=torch.Generator().manual_seed(seed))
        self.arrays = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
        self.examples_seen += len(fresh)
        return self.arrays, f"central fine-tuning on {len(fresh)} new examples, {time.perf_counter() - started:.0f} s"

    def report(self) -> dict:
        return {"mode": "none (central, non-private)", "retrainings": self.retrainings,
                "examples": self.examples_seen}
