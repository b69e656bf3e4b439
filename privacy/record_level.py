"""Record-level DP-SGD, as one type: what the config sets, the server sends and a device trains with.

Each device runs DP-SGD on its own examples (Opacus' ``DPOptimizer`` or the batched trainer's own step) with noise
multiplier z and per-example clipping norm C, and keeps its own ledger against its budget ``target_epsilon`` at
``delta`` over every round it trains. It protects one example of a user, not the user. The same frozen dataclass is
``privacy.record`` in the run's settings, ``record`` in a round's instructions and the trainers' ``dp`` argument, so
its rules are checked in one place.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RecordLevelDP:
    """DP-SGD's parameters and the device's own budget for it.

    Attributes:
        noise_multiplier: z, Gaussian noise of std z·C on each batch's sum of clipped per-example gradients.
        max_grad_norm: C, each example's gradient is clipped to this L2 norm.
        target_epsilon: the record-level epsilon each device may spend over all its rounds.
        delta: its delta (per user: must be < 1 / the examples in a user's log).
    """

    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    target_epsilon: float = 10.0
    delta: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "max_grad_norm", "target_epsilon"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0 (record-level DP-SGD); found {getattr(self, name)}.")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must be in (0, 1) (record-level DP-SGD); found {self.delta}.")
