"""The device owner's privacy floor: which instructions a device follows, whatever the server asks.

The server sends each round's privacy settings; a device never takes them on trust. ``DevicePrivacyPolicy`` holds
the least noise and the most epsilon and delta its owner accepts, and how many rounds a day it joins across runs. It
is read from the JSON file the node config names (``privacy-policy``), field by field, or the safe defaults hold.

Two kinds of refusal:
- ``refusal(instructions)``: the instructions themselves break the policy (too little noise, a delta of 0.99, no
  user-level DP at all, a run whose epsilon passes the per-run cap): the device answers with an error carrying the
  rule's reason code (``protocol.reply_layout.REASON_CODES``). The server sent those values, so the code tells it
  nothing about the user.
- the device's own state (its lifetime budgets, its rounds today: ``client.device_ledger``) makes it sit a round out:
  it sends the all-zero contribution and keeps the reason to itself.

User-level epsilon as the device counts it: each run it joins costs what the run announces (its noise multiplier
and sampling rate over its planned rounds, and the devices' evaluation), composed over every run the device ever
joined (RDP). That trusts the server to add the noise and to sample as it says; ``max_rounds_per_day`` bounds what a
server that lies about its sampling could take (each joined round is then a Gaussian mechanism with multiplier at
least ``min_noise_multiplier`` on the device's bounded contribution).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from client.device_ledger import DAY_S, DeviceLedger
from privacy.accounting import Entry, announced_epsilon
from privacy.banded_mf import participations
from privacy.errors import PrivacyConfigError
from protocol.instructions import InstructionError, TrainInstructions, dataclass_from_dict
from protocol.node_config import PRIVACY_POLICY
from validation.config import check_range


class PolicyRefusal(Exception):
    """Instructions this device's policy refuses; ``code`` is the reason code its error reply carries."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


@dataclass(frozen=True)
class DevicePrivacyPolicy:
    """What the device owner accepts. The defaults are safe for a phone: user-level DP required, at most ε = 10 per
    run and 40 over the device's life, δ at most 1e-5 per run (1e-3 for record-level DP, whose unit is one example),
    and at most 24 rounds a day.

    Attributes:
        require_user_level: refuse runs that add no user-level noise (privacy none or record).
        min_noise_multiplier: the least user-level noise multiplier a run may announce.
        max_user_delta: the largest user-level delta a run may announce.
        max_user_epsilon_per_run: the most one run may cost, as its announced mechanism accounts it.
        max_user_epsilon_lifetime: the most all runs the device joins may cost together.
        min_record_noise_multiplier, max_record_delta: record-level DP-SGD's floor and delta cap.
        max_record_epsilon_per_run: the most record-level epsilon one run may ask the device to spend.
        max_record_epsilon_lifetime: the device's record-level budget over its whole life.
        max_rounds_per_day: rounds the device joins in any 24 hours, across runs.
        A cap of None (JSON null) is no cap.
    """

    require_user_level: bool = True
    min_noise_multiplier: float = 0.5
    max_user_delta: float = 1e-5
    max_user_epsilon_per_run: Optional[float] = 10.0
    max_user_epsilon_lifetime: Optional[float] = 40.0
    min_record_noise_multiplier: float = 0.5
    max_record_delta: float = 1e-3
    max_record_epsilon_per_run: Optional[float] = 10.0
    max_record_epsilon_lifetime: Optional[float] = 50.0
    max_rounds_per_day: Optional[int] = 24

    def __post_init__(self) -> None:
        for name in ("min_noise_multiplier", "min_record_noise_multiplier"):
            check_range(f"privacy policy {name}", getattr(self, name), 0, error=PrivacyConfigError)
        for name in ("max_user_delta", "max_record_delta"):
            check_range(f"privacy policy {name}", getattr(self, name), 0, 1, low_open=True, high_open=True,
                        error=PrivacyConfigError)
        for name in ("max_user_epsilon_per_run", "max_user_epsilon_lifetime", "max_record_epsilon_per_run",
                     "max_record_epsilon_lifetime"):
            if getattr(self, name) is not None:
                check_range(f"privacy policy {name}", getattr(self, name), 0, low_open=True, note=" (null: no cap)",
                            error=PrivacyConfigError)
        if self.max_rounds_per_day is not None:
            check_range("privacy policy max_rounds_per_day", self.max_rounds_per_day, 1, integer=True,
                        note=" (null: no cap)", error=PrivacyConfigError)

    @classmethod
    def permissive(cls) -> DevicePrivacyPolicy:
        """No floor and no cap: a simulation's synthetic users, whose runs compare privacy settings (privacy=none
        included). Never a real device's."""
        return cls(require_user_level=False, min_noise_multiplier=0.0, max_user_delta=1.0 - 1e-12,
                   max_user_epsilon_per_run=None, max_user_epsilon_lifetime=None, min_record_noise_multiplier=0.0,
                   max_record_delta=1.0 - 1e-12, max_record_epsilon_per_run=None, max_record_epsilon_lifetime=None,
                   max_rounds_per_day=None)

    @property
    def tracks_participation(self) -> bool:
        """Whether the device must remember the runs and rounds it joins (a user-level lifetime or daily cap)."""
        return self.max_user_epsilon_lifetime is not None or self.max_rounds_per_day is not None

    def refusal(self, instructions: TrainInstructions, ledger: DeviceLedger, *,
                training: bool = True) -> PolicyRefusal | None:
        """Why these instructions break the policy, or None: what the server sent, and whether it contradicts what
        the same run told this device before (another mechanism; when ``training``, a round past the plan or one it
        already joined: the devices' evaluation comes after the last round)."""
        user, record = instructions.user_level, instructions.record
        if user is None or instructions.clipping_norm is None:
            if self.require_user_level:
                return PolicyRefusal("policy-no-user-level-dp", "the run adds no user-level noise")
        else:
            if user.noise_multiplier < self.min_noise_multiplier:
                return PolicyRefusal("policy-user-noise", f"z = {user.noise_multiplier} < {self.min_noise_multiplier}")
            if not 0.0 < user.delta <= self.max_user_delta:
                return PolicyRefusal("policy-user-delta", f"delta = {user.delta} not in (0, {self.max_user_delta}]")
            cost = run_user_epsilon(instructions)
            if self.max_user_epsilon_per_run is not None and cost > self.max_user_epsilon_per_run:
                return PolicyRefusal("policy-user-epsilon", f"the run costs ε = {cost:.3g} > {self.max_user_epsilon_per_run}")
        if record is not None:
            if record.noise_multiplier < self.min_record_noise_multiplier:
                return PolicyRefusal("policy-record-noise",
                                     f"z = {record.noise_multiplier} < {self.min_record_noise_multiplier}")
            if not 0.0 < record.delta <= self.max_record_delta:
                return PolicyRefusal("policy-record-delta", f"delta = {record.delta} not in (0, {self.max_record_delta}]")
            if self.max_record_epsilon_per_run is not None and record.target_epsilon > self.max_record_epsilon_per_run:
                return PolicyRefusal("policy-record-epsilon",
                                     f"budget {record.target_epsilon} > {self.max_record_epsilon_per_run}")
        if training and instructions.planned_rounds and instructions.round > instructions.planned_rounds:
            return PolicyRefusal("policy-round-order", f"round {instructions.round} > {instructions.planned_rounds} planned")
        known = ledger.run(instructions.run_key) if instructions.run_key and user is not None else None
        if known is not None:
            if known["mechanism"] != mechanism_of(instructions):
                return PolicyRefusal("policy-run-changed", f"{mechanism_of(instructions)} after {known['mechanism']}")
            if training and instructions.round <= known["last_round"]:
                return PolicyRefusal("policy-round-order", f"round {instructions.round} after round {known['last_round']}")
        return None

    def sits_out(self, instructions: TrainInstructions, ledger: DeviceLedger, now: float) -> str | None:
        """Why the device's own state keeps it out of this round (said only in its own log), or None. Under a banded
        mechanism (``min_separation`` > 0) that includes a round too soon after the last one it joined in the run: its
        epsilon assumes rounds at least that far apart, whoever the server picks."""
        separation = instructions.user_level.min_separation if instructions.user_level is not None else 0
        known = ledger.run(instructions.run_key) if separation else None
        if known is not None and instructions.round - int(known["last_round"]) < separation:
            return (f"it joined round {known['last_round']} of this run, fewer than the {separation} rounds apart its "
                    "banded mechanism assumes")
        if self.max_rounds_per_day is not None and ledger.rounds_joined_since(now - DAY_S) >= self.max_rounds_per_day:
            return f"it joined {self.max_rounds_per_day} rounds in the last 24 hours"
        user = instructions.user_level
        if user is not None and self.max_user_epsilon_lifetime is not None:
            total = ledger.user_epsilon_with(instructions.run_key, run_history(instructions), delta=user.delta)
            if total > self.max_user_epsilon_lifetime:
                return f"its runs would cost user-level ε = {total:.3g} > {self.max_user_epsilon_lifetime} over its life"
        return None

    def record_budget(self, instructions: TrainInstructions) -> float:
        """The record-level epsilon the device may reach over its life: the server's budget for it, or the owner's
        if lower."""
        record = instructions.record
        assert record is not None
        cap = self.max_record_epsilon_lifetime
        return record.target_epsilon if cap is None else min(record.target_epsilon, cap)


def mechanism_of(instructions: TrainInstructions) -> list[float]:
    """The announced user-level mechanism a run may not change: noise multiplier, sampling rate, delta."""
    user = instructions.user_level
    assert user is not None
    banded = [float(user.min_separation)] if user.min_separation else []
    return [user.noise_multiplier, user.sample_rate, user.delta] + banded


def run_user_epsilon(instructions: TrainInstructions) -> float:
    """What the run the instructions belong to costs a device at most, user-level, as the run announces its
    mechanism: its planned rounds at (z, q) and the devices' evaluation at (z, evaluation rate), RDP at its delta."""
    user = instructions.user_level
    assert user is not None
    return announced_epsilon(run_history(instructions), delta=user.delta)


def run_history(instructions: TrainInstructions) -> list[Entry]:
    """The announced releases of the instructions' run, as ledger entries: (z, q, steps) for the server's Gaussian
    noise; under ``privacy=distributed`` the devices' shares (Delta2, sigma_dev^2, minimum survivors, padded
    dimension, q, steps), which the device accounts as the run's own ledger does."""
    user = instructions.user_level
    assert user is not None
    rounds = max(instructions.planned_rounds, instructions.round)
    share = instructions.distributed
    if share is not None:
        plan = share.plan
        return [(plan.norm_bound, float(plan.device_variance), plan.min_survivors, plan.padded, user.sample_rate, rounds)]
    if user.min_separation:  # banded: the rounds it can join, each unamplified (privacy.banded_release)
        history: list[Entry] = [(user.noise_multiplier, 1.0, participations(rounds, user.min_separation))]
    else:
        history = [(user.noise_multiplier, user.sample_rate, rounds)]
    if user.evaluation_rate > 0.0:
        history.append((user.noise_multiplier, 1.0 if user.min_separation else user.evaluation_rate, 1))
    return history


def load_policy(node_config: Mapping[str, object]) -> DevicePrivacyPolicy:
    """The policy in the JSON file node config ``privacy-policy`` names, or the defaults.

    Raises:
        PrivacyConfigError: if the file cannot be read or holds an unknown key, a wrong type or a value out of range
            (the message names the file and the key).
    """
    path = node_config.get(PRIVACY_POLICY)
    if path in (None, ""):
        return DevicePrivacyPolicy()
    try:
        values = json.loads(Path(str(path)).expanduser().read_text())
    except (OSError, ValueError) as error:
        raise PrivacyConfigError(f"node config '{PRIVACY_POLICY}' = {str(path)!r}: cannot read a JSON object "
                                 f"({error}).") from None
    try:
        return dataclass_from_dict(DevicePrivacyPolicy, values, "")
    except (InstructionError, PrivacyConfigError) as error:
        raise PrivacyConfigError(f"{path}: {error} Allowed keys: "
                                 f"{[f.name for f in dataclasses.fields(DevicePrivacyPolicy)]}.") from None
