"""Scoring the global prior on held-out examples it is given, next to baselines computed by whoever gives them.

The server scores on ``HeldOutData`` it is handed: the simulation hands it held-out synthetic users and the baselines
computed from its synthetic users (``simulations.federation.held_out``, ``simulations.federation.references``); a
real server holds no users' data and is handed none. The server knows the baselines only as named figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from model.features.examples import Examples
from model.network.networks import PreferenceLSTM
from model.network.training import evaluate


@dataclass(frozen=True)
class Baselines:
    """Each baseline's held-out top-1 by name (None: not computed), and lines saying how they were computed."""

    top1: dict[str, float | None]
    notes: tuple[str, ...] = ()


class PendingBaselines(Protocol):
    """Baselines being computed while the rounds run (they depend on the configuration alone)."""

    def result(self) -> Baselines: ...

    def cancel(self) -> None: ...


class HeldOutData(Protocol):
    """Examples no client trains on, which the server scores the global model on each round, and the baselines the
    model must beat on them (started with the run, reported at its end)."""

    def examples(self) -> Examples: ...

    def baselines(self, held_out: Examples) -> PendingBaselines: ...


def score(model: PreferenceLSTM, examples: Examples) -> dict[str, float]:
    result = evaluate(model, examples)
    return {"top1": result.top1, "nll": result.nll}
