"""The closed-loop experiment's private policies run a device room per user: what the rooms hold at a retraining is
what the devices would hold (every event of the user's log), and the retrained prior reaches a device with its next
request."""

from __future__ import annotations

import json

import torch

from generation.cold_start import ExplorationConfig, Questionnaire
from model.network.networks import PreferenceLSTM
from simulations.loop.policies import DeviceRoomPolicy, RequestContext
from tests.helpers import PRIOR_MODEL, T0, listener_log


class KeepThePrior:
    """A retraining that returns the prior it was given (the federation is not what these tests are about)."""

    def __init__(self, arrays):
        self.arrays, self.logs = arrays, []

    def retrain(self, logs):
        self.logs.append([list(log) for log in logs])
        return self.arrays, "kept"

    def report(self) -> dict:
        return {}


def _context(log, interactions_done: int) -> RequestContext:
    request = log[-1]
    return RequestContext(user=0, ts=request.ts, utc_offset_min=60, prompt=request.prompt, seed=1,
                          interactions_done=interactions_done, log=log,
                          answers=Questionnaire(("folk",), "evening", "slow"))


def test_a_retraining_finds_every_event_on_the_device_and_the_prior_arrives_with_the_next_request(tmp_path):
    torch.manual_seed(0)
    arrays = {k: v.numpy().copy() for k, v in PreferenceLSTM(PRIOR_MODEL).state_dict().items()}
    policy = DeviceRoomPolicy("federated_dp_personal", PRIOR_MODEL, arrays, KeepThePrior(arrays), root=tmp_path,
                              window=8, exploration=ExplorationConfig(interactions=1), questionnaire_weight=0.7,
                              personal=True)
    log = listener_log(sessions=6)
    first_request = log[:13]  # three sessions, then the fourth's request
    policy.condition([_context(first_request, 3)])
    room = policy.rooms[0]
    assert len(room.events) == 13 and room.preference.kept.info.version == 1
    # The user reacts (redo, tempo, keep) and goes offline; the federation retrains on the whole log.
    note = policy.retrain([log[:16]])
    assert len(room.events) == 16  # the reactions were logged on the device as they happened
    assert room.preference.kept.info.version == 1 and "sent to 1 device rooms" in note  # offline: not yet delivered
    policy.condition([_context(log[:17], 4)])
    assert room.preference.kept.info.version == 2
    refit = json.loads((room.storage / "personal_offset.json").read_text())
    assert refit["events"] == 16  # the offset was refit on everything the federation trained on
    policy.close()
