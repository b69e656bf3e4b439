"""What a federated run carries from round to round (checkpointed), and what one round produced."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from privacy.accounting import PrivacyLedger
from privacy.user_level import ClippingStats


@dataclass
class RoundOutcome:
    """What one round's aggregation produced, whichever path (plain or secure) ran it."""

    arrays: dict[str, np.ndarray]
    stats: ClippingStats
    clients: int
    failed: int  # error replies and users that never answered
    sampled: int = 0  # drawn by Poisson sampling
    skipped_busy: int = 0  # drawn, but their node was still busy with an earlier message
    rejected: int = 0
    declined: int = 0
    train_loss: float | None = None
    problems: list[tuple[int, str]] = field(default_factory=list)
    halted: str | None = None  # secure aggregation only: why no sum was revealed
    record_epsilon: dict[int, float] = field(default_factory=dict)  # each update's reported record-level ε


@dataclass
class RunState:
    """What changes from round to round, and is checkpointed."""

    round: int
    arrays: dict[str, np.ndarray]
    ledger: PrivacyLedger
    noise_multiplier: float | None
    rounds: list[dict] = field(default_factory=list)
    record_epsilon: dict[int, float] = field(default_factory=dict)  # node (slot mode: user) -> latest record-level ε
