"""What one device puts into a round's release: its clipped update and a few bounded statistics, as one vector.

The server needs a few things from the devices beside the model update: how many trained, how many updates fitted
within the clipping norm (adaptive clipping, Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping"), and their mean training loss. None of it travels on its own. Each is a bounded extra coordinate of the
device's contribution, so it is clipped, summed, noised and accounted together with the update:

    v = [ update clipped to C ;  w·participated,  w·unclipped,  w·min(loss, L)/L ]     with w = β·C,

participated and unclipped in {0, 1} and the loss scaled into [0, 1]. Then ||v|| <= S = C·sqrt(1 + 3β²) (the
mechanism's sensitivity), and the Gaussian mechanism that adds N(0, (z·S)²) to every coordinate of the sum is the
one the ledger records, with the same (z, q): the statistics cost no extra privacy, only 1.5 % more noise on the
update at β = 0.1. Andrew et al. (Sec. 3) noise the clipped count separately and compose; folding it into one
vector is the same Gaussian mechanism with the two noise scales tied by β. A device that declines a round sends the
all-zero vector, which under secure aggregation the server cannot tell from any other.

The noise on a summed statistic is z·S/w = z·sqrt(1 + 3β²)/β: about 10·z, so counts over hundreds of devices are
read to a few percent. Framework-free: numpy in, numpy out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STATISTICS = ("participated", "unclipped", "loss")
"""The bounded statistics a train contribution carries, in order."""
STATISTIC_WEIGHT = 0.1
"""β: each statistic's coordinate lies in [0, β·C]."""
LOSS_BOUND = 4.0
"""L: a device's mean training loss (nats) is clipped to [0, L] (a uniform guess over 8 genres costs 2.08)."""


def statistic_weight(clipping_norm: float | None) -> float:
    """w: the largest value of a statistic's coordinate (β·C), or 1 when nothing is clipped (no user-level DP)."""
    return 1.0 if clipping_norm is None else STATISTIC_WEIGHT * clipping_norm


def contribution_sensitivity(clipping_norm: float) -> float:
    """S = C·sqrt(1 + 3β²): the largest L2 norm of one device's whole contribution (update and statistics)."""
    if not clipping_norm > 0.0:
        raise ValueError(f"The clipping norm should be a positive value; found {clipping_norm}.")
    return clipping_norm * math.sqrt(1.0 + len(STATISTICS) * STATISTIC_WEIGHT**2)


@dataclass(frozen=True)
class DeviceStatistics:
    """One device's statistics for a round, before they are bounded and scaled.

    Attributes:
        participated: it trained this round (a device that declines sends zeros).
        unclipped: its update's norm was within the clipping norm.
        loss: its mean training loss, or None when no mechanism will noise it (then the coordinate is 0).
    """

    participated: bool
    unclipped: bool
    loss: float | None


def encode_statistics(statistics: DeviceStatistics, clipping_norm: float | None) -> np.ndarray:
    """The statistics' coordinates of a contribution: each in [0, w], float32 (the model's precision)."""
    w = statistic_weight(clipping_norm)
    loss = 0.0 if statistics.loss is None or not math.isfinite(statistics.loss) else statistics.loss
    values = [float(statistics.participated), float(statistics.unclipped), min(max(loss, 0.0), LOSS_BOUND) / LOSS_BOUND]
    return (np.asarray(values, dtype=np.float64) * w).astype(np.float32)


def bound_statistics(coordinates: np.ndarray, clipping_norm: float | None) -> np.ndarray:
    """Coordinates a reply claims, clamped into [0, w] (float64): the server's own bound, whatever a device sent."""
    return np.clip(np.asarray(coordinates, dtype=np.float64), 0.0, statistic_weight(clipping_norm))


def zero_statistics() -> np.ndarray:
    """A declining device's statistics: all zero."""
    return np.zeros(len(STATISTICS), dtype=np.float32)


@dataclass(frozen=True)
class ReleasedStatistics:
    """A round's statistics as released: sums over the contributing devices, noised like the update (or exact,
    without user-level DP). Noisy sums may leave their range; the derived means are clamped to it.

    Attributes:
        participants: how many devices trained.
        unclipped: how many of their updates fitted within the clipping norm.
        loss_sum: the sum of their bounded mean losses (nats).
        noisy: whether the values carry the mechanism's noise.
    """

    participants: float
    unclipped: float
    loss_sum: float
    noisy: bool

    @property
    def unclipped_fraction(self) -> float:
        """Share of the participants whose update was not clipped (in [0, 1]; 0 with nobody)."""
        return float(np.clip(self.unclipped / self.participants, 0.0, 1.0)) if self.participants >= 1.0 else 0.0

    @property
    def mean_loss(self) -> float | None:
        """Mean bounded training loss of the participants (in [0, L]); None when nobody took part."""
        if self.participants < 1.0:
            return None
        return float(np.clip(self.loss_sum / self.participants, 0.0, LOSS_BOUND))


def decode_statistics(total: np.ndarray, clipping_norm: float | None, *, noisy: bool) -> ReleasedStatistics:
    """The released statistics from the (noisy) sum of the devices' statistic coordinates."""
    participants, unclipped, loss = (np.asarray(total, dtype=np.float64) / statistic_weight(clipping_norm)).tolist()
    return ReleasedStatistics(participants=participants, unclipped=unclipped, loss_sum=loss * LOSS_BOUND, noisy=noisy)
