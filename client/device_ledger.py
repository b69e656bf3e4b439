"""The device's own privacy ledger, kept in the device's private storage: what every run it joined may cost it.

Two accounts, both over the device's whole life, across runs (so they live on the device, in a small JSON file next to
the log, not in Flower's per-run node state):

- record level: every DP-SGD run the device trained (``history``, Opacus' format), and per run (``record_runs``); a
  device whose next round would pass its budget sits the round out;
- user level: each run it joined, keyed by the run's key, with the releases the run announced (its noise multiplier
  and sampling rate over its planned rounds, and the devices' evaluation) and the last round it joined (``runs``),
  and when it joined rounds (``joined``, the last 24 hours);
- under ``privacy=distributed``, the coin it drew for each round it was invited to (``check_ins``): drawn once from
  the OS, so asking again cannot re-roll it, and a round it did not join by its coin cannot get its share. The device's user-level epsilon is those runs composed;
  it bounds what the device gives, whatever the server's ledger says.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from privacy.accounting import Entry, PrivacyLedger, announced_epsilon, fast_rdp_epsilon
from storage.atomic import atomic_write

DAY_S = 86_400.0

History = list[tuple[float, float, int]]


class DeviceLedger(PrivacyLedger):
    """A ``PrivacyLedger`` of record-level DP-SGD, and the device's runs, persisted to ``path`` (or memory only when
    ``path`` is None)."""

    def __init__(self, path: str | Path | None) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.record_runs: dict[str, History] = {}
        self.runs: dict[str, dict] = {}
        self.joined: list[float] = []
        self.check_ins: dict[str, dict[str, bool]] = {}
        if self.path is not None and self.path.is_file():
            self.load_state_dict(json.loads(self.path.read_text()))

    # ------------------------------------------------------------------------------------------------ record level
    def rdp_epsilon(self, *, delta: float) -> float:
        """Record-level epsilon so far (RDP, cached per mechanism: microseconds, cheap every round)."""
        return fast_rdp_epsilon(self.history, delta=delta)

    def rdp_epsilon_after(self, *, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
        return fast_rdp_epsilon(self.history + [(noise_multiplier, sample_rate, steps)], delta=delta)

    def run_rdp_epsilon_after(self, run_key: str, *, noise_multiplier: float, sample_rate: float, steps: int,
                              delta: float) -> float:
        """Record-level epsilon run ``run_key`` would have cost after one more DP-SGD run."""
        return fast_rdp_epsilon(self.record_runs.get(run_key, []) + [(noise_multiplier, sample_rate, steps)],
                                delta=delta)

    def record_training(self, run_key: str, *, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """One DP-SGD run, in the lifetime account and in its run's."""
        self.record(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        self.record_runs.setdefault(run_key, []).append((float(noise_multiplier), float(sample_rate), int(steps)))

    # -------------------------------------------------------------------------------------------------- user level
    def user_epsilon_with(self, run_key: str, announced: list[Entry], *, delta: float) -> float:
        """User-level epsilon of every run the device joined, with run ``run_key`` costing ``announced`` (RDP,
        composed at ``delta``)."""
        histories = {key: [tuple(entry) for entry in run["announced"]] for key, run in self.runs.items()}
        histories[run_key] = announced
        return announced_epsilon([entry for history in histories.values() for entry in history], delta=delta)

    def run(self, run_key: str) -> dict | None:
        """What the device remembers of run ``run_key``: its ``mechanism`` (z, q, delta), the ``announced``
        releases, the ``last_round`` it joined; None for a run it never joined."""
        return self.runs.get(run_key)

    def rounds_joined_since(self, since: float) -> int:
        return sum(1 for t in self.joined if t >= since)

    def join(self, run_key: str, *, round_number: int, mechanism: list[float], announced: list[Entry], now: float) -> None:
        """Remember that the device contributed to round ``round_number`` of run ``run_key`` at time ``now``."""
        run = self.runs.setdefault(run_key, {"mechanism": list(mechanism), "last_round": 0})
        run["announced"] = [list(entry) for entry in announced]
        run["last_round"] = max(int(run["last_round"]), int(round_number))
        self.joined = [t for t in self.joined if t >= now - DAY_S] + [float(now)]

    def check_in(self, run_key: str, round_number: int, sample_rate: float) -> bool:
        """Whether the device joins round ``round_number`` of run ``run_key``: a coin with probability
        ``sample_rate`` from the OS, drawn the first time it is asked and the same answer after (call ``save``)."""
        rounds = self.check_ins.setdefault(run_key, {})
        if str(round_number) not in rounds:
            rounds[str(round_number)] = secrets.randbelow(2**53) < sample_rate * 2**53
        return rounds[str(round_number)]

    def checked_in(self, run_key: str, round_number: int) -> bool:
        """Whether the device's coin joined it to round ``round_number`` of run ``run_key``."""
        return self.check_ins.get(run_key, {}).get(str(round_number), False)

    # ------------------------------------------------------------------------------------------------- storage
    def state_dict(self) -> dict:
        return {**super().state_dict(), "record_runs": {k: [list(e) for e in v] for k, v in self.record_runs.items()},
                "runs": self.runs, "joined": self.joined, "check_ins": self.check_ins}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.record_runs = {k: [(float(z), float(q), int(n)) for z, q, n in v]
                            for k, v in state.get("record_runs", {}).items()}
        self.runs = dict(state.get("runs", {}))
        self.joined = [float(t) for t in state.get("joined", [])]
        self.check_ins = {k: {r: bool(j) for r, j in v.items()} for k, v in state.get("check_ins", {}).items()}

    def save(self) -> None:
        """Write atomically and durably: a crash or power cut mid-write keeps the previous ledger."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "w") as handle:
            json.dump(self.state_dict(), handle)
