"""What a federated run carries from round to round (checkpointed), and what one round produced."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from privacy.accounting import PrivacyLedger
from privacy.contribution import ReleasedStatistics


@dataclass
class RoundOutcome:
    """What one round's aggregation produced, whichever path (plain or secure) ran it.

    ``statistics`` come from the round's release (noisy under user-level DP); the counts of replies are what the
    server sees of the network (who answered, and whether the reply was well formed), never a device's values.
    """

    arrays: dict[str, np.ndarray]
    statistics: ReleasedStatistics
    replies: int  # well-formed contributions folded into the release
    failed: int  # error replies and users that never answered
    sampled: int = 0  # drawn by Poisson sampling
    skipped_busy: int = 0  # drawn, but their node was still busy with an earlier message
    rejected: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    halted: str | None = None  # why the round released no sum (secure aggregation) or kept the model (not finite)
    clipping_norm: float | None = None  # the clipping norm the devices were told this round


@dataclass
class RunState:
    """What changes from round to round, and is checkpointed."""

    round: int
    arrays: dict[str, np.ndarray]
    ledger: PrivacyLedger
    noise_multiplier: float | None
    rounds: list[dict] = field(default_factory=list)
    clipping_norm: float | None = None  # the next round's clipping norm (adaptive clipping moves it)
    run_key: str = ""  # the run's identity for the devices' ledgers; a resumed run keeps it
