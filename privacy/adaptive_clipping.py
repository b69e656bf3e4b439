"""Adaptive clipping: the user-level clipping norm follows a quantile of the devices' update norms.

Andrew, Thakkar, McMahan & Ramaswamy 2021, "Differentially Private Learning with Adaptive Clipping" (Alg. 1,
geometric update): after each round, with b the share of this round's updates whose norm was at most C,

    C <- C * exp(-eta * (b - gamma)),

so C shrinks while more than the target share gamma of updates fits within it and grows while fewer do. b is read
from the round's release (``privacy.contribution``: the noised count of unclipped updates over the noised count of
participants), so the rule is post-processing of an accounted release and costs no extra privacy. Framework-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from privacy.errors import PrivacyConfigError
from validation.config import check_range


@dataclass(frozen=True)
class AdaptiveClipping:
    """The geometric rule, with the target quantile ``gamma`` and the step ``eta`` (Andrew et al. use 0.5 and 0.2).

    Raises:
        PrivacyConfigError: if the quantile is not in (0, 1) or the step not in (0, 10].
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2

    def __post_init__(self) -> None:
        check_range("privacy.clipping_quantile", self.target_quantile, 0, 1, low_open=True, high_open=True,
                    error=PrivacyConfigError)
        check_range("privacy.clipping_learning_rate", self.learning_rate, 0, 10, low_open=True, error=PrivacyConfigError)

    def next_norm(self, clipping_norm: float, unclipped_fraction: float) -> float:
        """The clipping norm of the next round, from this round's (noised) share of unclipped updates in [0, 1]."""
        share = min(max(unclipped_fraction, 0.0), 1.0)
        return clipping_norm * math.exp(-self.learning_rate * (share - self.target_quantile))
