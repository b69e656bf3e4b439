"""A device's privacy floor: instructions its owner's policy refuses are answered with the rule's code, and its own
ledger (persisted across runs) keeps it out of rounds past its caps, whatever the server asks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.client_app import app
from client.device_ledger import DeviceLedger
from client.privacy_policy import DevicePrivacyPolicy, load_policy, run_user_epsilon
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from privacy.record_level import RecordLevelDP
from privacy.accounting import fast_rdp_epsilon
from privacy.errors import PrivacyConfigError
from protocol.instructions import (
    DataInstructions,
    InstructionError,
    TrainInstructions,
    UserLevelInstructions,
    to_config_items,
)
from protocol.records import to_array_record
from protocol.reply_layout import CONTRIBUTION, REASON_CODES, STATISTICS_ARRAY
from simulations.seed_logs import seed_device_logs
from tests.helpers import announced

MODEL = ModelConfig(hidden_size=8, num_layers=1, bidirectional=False, dropout=0.0, head_dropout=0.0)
DATA = DataInstructions(window=16)
USER = UserLevelInstructions(noise_multiplier=1.0, sample_rate=0.1, delta=1e-6)
RECORD = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=5.0, delta=1e-3)


@pytest.fixture(scope="module")
def log_db(tmp_path_factory):
    [log] = seed_device_logs(tmp_path_factory.mktemp("device"), devices=1, days=7, first_user=2)
    return str(log.path)


def _instructions(**changes) -> TrainInstructions:
    base = dict(round=1, seed=0, model=MODEL, train=LocalTrainConfig(batch_size=8, max_examples=16), data=DATA,
                clipping_norm=0.5, **announced())
    return TrainInstructions(**(base | changes))


def _send(instructions: TrainInstructions, node_config: dict, kind: str = "train") -> Message:
    arrays = {k: v.numpy().copy() for k, v in PreferenceLSTM(MODEL).state_dict().items()}
    content = RecordDict({"arrays": to_array_record(arrays), "config": ConfigRecord(to_config_items(instructions))})
    context = Context(run_id=1, node_id=0, node_config=node_config, state=RecordDict(), run_config={})
    return app(Message(content, dst_node_id=0, message_type=kind), context)


def _device(log_db: str, tmp_path, policy: dict | None = None) -> dict:
    config = {"log-db": log_db, "ledger-path": str(tmp_path / "ledger.json")}
    if policy is not None:
        (tmp_path / "policy.json").write_text(json.dumps(policy))
        config["privacy-policy"] = str(tmp_path / "policy.json")
    return config


def _participated(reply: Message) -> bool:
    assert not reply.has_error(), reply.error
    return bool(reply.content[CONTRIBUTION][STATISTICS_ARRAY].numpy()[0] > 0)


def _all_zero(reply: Message) -> bool:
    return all(not np.any(v.numpy()) for v in reply.content[CONTRIBUTION].values())


REFUSED = {
    "no user-level DP (privacy=record)": (dict(user_level=None, clipping_norm=None, record=RECORD), "policy-no-user-level-dp"),
    "no user-level DP (privacy=none)": (dict(user_level=None, clipping_norm=None), "policy-no-user-level-dp"),
    "user noise below the floor": (dict(user_level=UserLevelInstructions(0.1, 0.1, 1e-6)), "policy-user-noise"),
    "user delta 0.99": (dict(user_level=UserLevelInstructions(1.0, 0.1, 0.99)), "policy-user-delta"),
    "a run costing epsilon 1e3": (dict(user_level=UserLevelInstructions(0.5, 1.0, 1e-6), planned_rounds=5000),
                                  "policy-user-epsilon"),
    "record noise below the floor": (dict(record=RecordLevelDP(0.1, 1.0, 5.0, 1e-3)), "policy-record-noise"),
    "record delta 0.99": (dict(record=RecordLevelDP(1.0, 1.0, 5.0, 0.99)), "policy-record-delta"),
    "record target epsilon 1e9": (dict(record=RecordLevelDP(1.0, 1.0, 1e9, 1e-3)), "policy-record-epsilon"),
    "a round past the plan": (dict(round=11), "policy-round-order"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_instructions_outside_the_default_policy_are_refused_with_the_rules_code(flower_task_identity, log_db,
                                                                                 tmp_path, case):
    changes, code = REFUSED[case]
    reply = _send(_instructions(**changes), _device(log_db, tmp_path))
    assert reply.has_error() and reply.error.reason == code and code in REASON_CODES
    assert not (tmp_path / "ledger.json").exists()  # nothing was trained, nothing recorded


def test_instructions_within_the_policy_train(flower_task_identity, log_db, tmp_path):
    assert _participated(_send(_instructions(record=RECORD), _device(log_db, tmp_path)))
    ledger = DeviceLedger(tmp_path / "ledger.json")
    assert ledger.run("test-run")["last_round"] == 1 and ledger.history and ledger.record_runs["test-run"]


def test_the_evaluation_is_held_to_the_same_floor(flower_task_identity, log_db, tmp_path):
    reply = _send(_instructions(user_level=UserLevelInstructions(0.1, 0.1, 1e-6)), _device(log_db, tmp_path), "evaluate")
    assert reply.has_error() and reply.error.reason == "policy-user-noise"


def test_a_replayed_round_and_a_changed_mechanism_are_refused(flower_task_identity, log_db, tmp_path):
    device = _device(log_db, tmp_path)
    assert _participated(_send(_instructions(round=3), device))
    for round_number in (3, 2):  # the same round again, an earlier one
        assert _send(_instructions(round=round_number), device).error.reason == "policy-round-order"
    louder = _instructions(round=4, user_level=UserLevelInstructions(1.0, 0.2, 1e-6))  # the run changes its q
    assert _send(louder, device).error.reason == "policy-run-changed"
    assert _participated(_send(_instructions(round=4), device))
    assert _participated(_send(_instructions(round=1, run_key="another-run"), device))  # a new run starts at 1


def test_the_ledger_bounds_user_level_epsilon_across_runs_and_sits_out_quietly(flower_task_identity, log_db, tmp_path):
    """Two runs fit the owner's lifetime cap, a third does not: the device sends the all-zero contribution (under
    SecAgg+ indistinguishable from any other) and keeps the reason to itself; its ledger survives a restart."""
    runs = [(1.0, 0.1, 10)]  # what each run announces (z, q, planned rounds)
    two, three = (fast_rdp_epsilon(runs * k, delta=1e-6) for k in (2, 3))
    assert run_user_epsilon(_instructions()) == fast_rdp_epsilon(runs, delta=1e-6) < two < three
    device = _device(log_db, tmp_path, {"max_user_epsilon_lifetime": (two + three) / 2})
    assert _participated(_send(_instructions(run_key="run-a"), device))
    assert _participated(_send(_instructions(run_key="run-b"), device))
    third = _send(_instructions(run_key="run-c"), device)
    assert _all_zero(third)
    ledger = DeviceLedger(tmp_path / "ledger.json")  # read back from disk, as a restarted device would
    assert set(ledger.runs) == {"run-a", "run-b"}
    assert ledger.user_epsilon_with("run-c", runs, delta=1e-6) == pytest.approx(three)


def test_the_device_joins_at_most_its_daily_rounds_across_runs(flower_task_identity, log_db, tmp_path):
    device = _device(log_db, tmp_path, {"max_rounds_per_day": 2})
    assert _participated(_send(_instructions(round=1, run_key="a"), device))
    assert _participated(_send(_instructions(round=1, run_key="b"), device))
    assert _all_zero(_send(_instructions(round=2, run_key="a"), device))
    ledger = DeviceLedger(tmp_path / "ledger.json")
    ledger.joined = [t - 86_401 for t in ledger.joined]  # a day later
    ledger.save()
    assert _participated(_send(_instructions(round=2, run_key="a"), device))


def test_the_owners_record_budget_below_the_servers_keeps_the_device_out(flower_task_identity, log_db, tmp_path):
    device = _device(log_db, tmp_path, {"max_record_epsilon_lifetime": 0.5})
    assert _all_zero(_send(_instructions(record=RECORD), device))
    assert not DeviceLedger(tmp_path / "ledger.json").history


def test_a_policy_file_is_read_field_by_field_and_refused_naming_the_key(tmp_path):
    assert load_policy({}) == DevicePrivacyPolicy()
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"min_noise_multiplier": 1.5, "max_rounds_per_day": None}))
    policy = load_policy({"privacy-policy": str(path)})
    assert policy.min_noise_multiplier == 1.5 and policy.max_rounds_per_day is None and policy.require_user_level
    for bad, rule in ({"min_noise_multipler": 1.0}, "Unknown key min_noise_multipler"), \
                     ({"max_user_delta": 2.0}, "max_user_delta must be in (0, 1)"), \
                     ({"max_rounds_per_day": 0}, "max_rounds_per_day must be an integer >= 1"):
        path.write_text(json.dumps(bad))
        with pytest.raises(PrivacyConfigError, match=rule.replace("(", r"\(").replace(")", r"\)")):
            load_policy({"privacy-policy": str(path)})
    path.write_text("{not json")
    with pytest.raises(PrivacyConfigError, match="cannot read a JSON object"):
        load_policy({"privacy-policy": str(path)})


def test_a_device_whose_policy_file_is_broken_answers_with_a_code(flower_task_identity, log_db, tmp_path):
    device = _device(log_db, tmp_path, {"min_noise_multipler": 1.0})
    assert _send(_instructions(), device).error.reason == "device-policy"


def test_instructions_that_announce_user_level_dp_without_a_run_key_are_malformed():
    with pytest.raises(ValueError, match="need run-key"):
        TrainInstructions(round=1, seed=0, user_level=USER)


def test_under_a_banded_mechanism_the_device_joins_rounds_only_as_far_apart_as_announced(flower_task_identity, log_db,
                                                                                         tmp_path):
    """DP-FTRL with a banded factor assumes nothing about who the server picks, only that a device's rounds are at
    least ``min_separation`` apart: the device holds itself to it, sitting out quietly (the all-zero contribution)
    even under the permissive default of a simulation, and counts the run as its k unamplified releases."""
    banded = UserLevelInstructions(noise_multiplier=2.0, sample_rate=1.0, delta=1e-6, min_separation=4)
    device = _device(log_db, tmp_path)
    assert _participated(_send(_instructions(round=1, user_level=banded), device))
    assert _all_zero(_send(_instructions(round=4, user_level=banded), device))  # 3 rounds after: too soon
    assert _participated(_send(_instructions(round=5, user_level=banded), device))
    assert run_user_epsilon(_instructions(user_level=banded)) == fast_rdp_epsilon([(2.0, 1.0, 3)], delta=1e-6)  # ceil(10/4)
    assert DeviceLedger(tmp_path / "ledger.json").run("test-run")["last_round"] == 5
    sooner = UserLevelInstructions(noise_multiplier=2.0, sample_rate=1.0, delta=1e-6, min_separation=1)
    assert _send(_instructions(round=6, user_level=sooner), device).error.reason == "policy-run-changed"  # no shrinking
    with pytest.raises(InstructionError, match="min_separation"):  # a separation with amplification claimed: malformed
        UserLevelInstructions(noise_multiplier=2.0, sample_rate=0.1, delta=1e-6, min_separation=4)
