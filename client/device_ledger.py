"""The device's own record-level privacy ledger, kept in the device's private storage.

Record-level DP-SGD protects single events of this user. Its epsilon adds up over every round the device
trains, including rounds of earlier runs, so the ledger lives on the device (a small JSON file next to the log),
not in Flower's per-run node state. A device whose next round would pass its budget declines to train.
"""

from __future__ import annotations

import json
from pathlib import Path

from privacy.accounting import PrivacyLedger, fast_rdp_epsilon
from storage.atomic import atomic_write


class DeviceLedger(PrivacyLedger):
    """A ``PrivacyLedger`` persisted to ``path`` (or memory only when ``path`` is None)."""

    def __init__(self, path: str | Path | None) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        if self.path is not None and self.path.is_file():
            self.load_state_dict(json.loads(self.path.read_text()))

    def rdp_epsilon(self, *, delta: float) -> float:
        """Record-level epsilon so far (RDP, cached per mechanism: microseconds, cheap every round)."""
        return fast_rdp_epsilon(self.history, delta=delta)

    def rdp_epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        return fast_rdp_epsilon(self.history + [(noise_multiplier, sample_rate, steps)], delta=delta)

    def save(self) -> None:
        """Write atomically and durably: a crash or power cut mid-write keeps the previous ledger."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "w") as handle:
            json.dump(self.state_dict(), handle)
