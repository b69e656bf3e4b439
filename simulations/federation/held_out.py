"""Held-out synthetic users for the server's scoring, and the baselines computed from the federation users' logs.

Held-out users (ids ``num_users .. num_users + eval_users - 1`` of the synthetic population) never train.
``SyntheticHeldOut`` is the ``server.evaluation.HeldOutData`` the simulation's ServerApp gives ``FederatedRun``;
the scoring is ``server.evaluation``'s, the baselines' rules ``simulations.federation.references``'.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from model.features.examples import Examples
from protocol.instructions import DataInstructions
from server.evaluation import Baselines, score
from server.settings import RunSettings
from simulations.federation.background import BackgroundCall
from simulations.federation.references import (
    central_config,
    global_mode_top1,
    named_else_recent_top1,
    recent_mode_top1,
    train_central,
)
from simulations.federation.device_data import device_examples


def held_out_examples(data: DataInstructions, user_ids: range, points_per_user: int) -> Examples:
    """The ``points_per_user`` most recent prediction points of each held-out user (with their full history
    window: these users never train). Recent points score the model where tastes have drifted furthest."""
    parts = []
    for uid in user_ids:
        train, recent = device_examples(data, uid)
        both = Examples.concat([train, recent], data.window)
        parts.append(both.subset(slice(max(0, len(both) - points_per_user), len(both))))
    return Examples.concat(parts, data.window)


def _federation_parts(data: DataInstructions, user_ids: range, max_per_user: int) -> Iterator[Examples]:
    """Each federation user's training examples, capped to its ``max_per_user`` most recent points (0: all)."""
    for uid in user_ids:
        train = device_examples(data, uid)[0]
        yield train.subset(slice(max(0, len(train) - max_per_user), len(train))) if max_per_user else train


def federation_examples(data: DataInstructions, user_ids: range, max_per_user: int = 0) -> Examples:
    """The training parts of the federation users' logs (each capped to its ``max_per_user`` most recent points,
    as the clients train), pooled: what a central server would have seen."""
    return Examples.concat(list(_federation_parts(data, user_ids, max_per_user)), data.window)


def baselines(settings: RunSettings, data: DataInstructions, held_out: Examples) -> Baselines:
    """The baselines' held-out top-1, from the logs of the first ``simulation.baseline_users`` federation users
    (users are drawn independently, so the first N are a sample), with a note on the central model. Only the
    central model needs the pooled windows (~0.4 MB a user by default); the other baselines read the pooled targets
    alone."""
    cap, total = settings.simulation.baseline_users, settings.population.num_users
    users, epochs = range(min(cap, total) if cap else total), settings.simulation.central_baseline_epochs
    started = time.perf_counter()
    if epochs > 0:
        pooled = federation_examples(data, users, settings.train.max_examples)
        targets = pooled.targets
    else:
        targets = torch.cat([part.targets for part in _federation_parts(data, users, settings.train.max_examples)])
    mode, global_top1 = global_mode_top1(targets, held_out)
    top1: dict[str, float | None] = {
        "global_most_popular": global_top1,
        "user_recent_most_frequent": recent_mode_top1(held_out, mode),
        "named_else_recent": named_else_recent_top1(held_out),
        "central_nonprivate": None,
    }
    if epochs <= 0:
        return Baselines(top1)
    central = train_central(pooled, settings.model, central_config(settings.train, epochs), settings.seed)
    top1["central_nonprivate"] = score(central, held_out)["top1"]
    took_s = time.perf_counter() - started  # pooling and training, not the imports before them
    return Baselines(top1, (f"central non-private baseline: {len(pooled)} pooled examples, {epochs} epoch(s); pooling "
                            f"the logs and training took {took_s:.0f} s",))


class SyntheticHeldOut:
    """The held-out synthetic users of a run (``server.evaluation.HeldOutData``).

    Args:
        settings: the run (its population's sizes, training and baseline settings).
        data: the data instructions the run sends, which describe its synthetic population.
    """

    def __init__(self, settings: RunSettings, data: DataInstructions) -> None:
        self.settings, self.data = settings, data

    def examples(self) -> Examples:
        p = self.settings.population
        return held_out_examples(self.data, range(p.num_users, p.num_users + p.eval_users), p.eval_points_per_user)

    def baselines(self, held_out: Examples) -> BackgroundCall[Baselines]:
        """``baselines`` started in a low-priority process of its own, so they cost the run no wall time when the
        rounds leave a core idle (``simulations.federation.background``)."""
        return BackgroundCall(baselines, self.settings, self.data, held_out)
