"""The product ClientApp keeps each global prior a device receives in the device's storage, after its reply is built:
keeping never changes the reply, a failure stays in the device's log, and a simulation slot keeps nothing."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.client_app import app, make_client_app
from client.received_prior import PRIOR_FOLDER, default_storage, device_storage_of
from model.device.prior_store import PriorStore
from model.network.networks import PreferenceLSTM
from model.network.training import LocalTrainConfig
from protocol.instructions import DataInstructions, TrainInstructions, to_config_items
from protocol.records import to_array_record, users_record
from protocol.reply_layout import CONTRIBUTION
from simulations.federation.device_data import simulated_data, simulated_device_data
from simulations.population.population import PopulationConfig
from simulations.seed_logs import seed_device_logs
from tests.helpers import PRIOR_MODEL, announced


@pytest.fixture(scope="module")
def log_db(tmp_path_factory):
    [log] = seed_device_logs(tmp_path_factory.mktemp("device"), devices=1, days=7, first_user=3)
    return str(log.path)


def _arrays(seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    return {k: v.numpy().copy() for k, v in PreferenceLSTM(PRIOR_MODEL).state_dict().items()}


def _instructions(round_number: int = 2, data: DataInstructions = DataInstructions(window=16)) -> TrainInstructions:
    return TrainInstructions(round=round_number, seed=0, model=PRIOR_MODEL, data=data, clipping_norm=0.5,
                             train=LocalTrainConfig(batch_size=8, max_examples=16), **announced())


def _send(client_app, instructions: TrainInstructions, node_config: dict, kind: str = "train",
          content: RecordDict | None = None) -> Message:
    content = content or RecordDict({"arrays": to_array_record(_arrays(1)),
                                     "config": ConfigRecord(to_config_items(instructions))})
    context = Context(run_id=1, node_id=0, node_config=node_config, state=RecordDict(), run_config={})
    return client_app(Message(content, dst_node_id=0, message_type=kind), context)


def test_a_device_keeps_the_prior_it_trained_from_and_the_one_it_evaluated(log_db, tmp_path, flower_task_identity):
    node = {"log-db": log_db, "ledger-path": str(tmp_path / "ledger.json")}
    reply = _send(app, _instructions(round_number=2), node)
    assert not reply.has_error() and list(reply.content.keys()) == [CONTRIBUTION]
    kept = PriorStore(default_storage(log_db) / PRIOR_FOLDER).current()
    assert (kept.info.run_key, kept.info.round, kept.info.message, kept.info.version) == ("test-run", 2, "train", 1)
    for name, value in _arrays(1).items():
        np.testing.assert_array_equal(kept.weights()[name], value)
    _send(app, _instructions(round_number=2), node, kind="evaluate")
    assert PriorStore(default_storage(log_db) / PRIOR_FOLDER).current().info.version == 2


def test_failing_to_keep_the_prior_changes_nothing_in_the_reply_and_stays_in_the_devices_log(
        log_db, tmp_path, flower_task_identity, caplog):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")  # the storage cannot be created: keeping fails
    kept = _send(app, _instructions(), {"log-db": log_db, "ledger-path": str(tmp_path / "1.json"),
                                        "device-storage": str(tmp_path / "storage")})
    with caplog.at_level(logging.WARNING, logger="client.received_prior"):
        failed = _send(app, _instructions(), {"log-db": log_db, "ledger-path": str(tmp_path / "2.json"),
                                              "device-storage": str(blocked)})
    assert "did not keep the received prior" in caplog.text
    assert not failed.has_error() and list(failed.content.keys()) == list(kept.content.keys())
    for name, array in kept.content[CONTRIBUTION].items():
        assert failed.content[CONTRIBUTION][name].data == array.data, name  # byte for byte


def test_a_refused_instruction_keeps_no_prior(log_db, tmp_path, flower_task_identity):
    storage = tmp_path / "storage"
    reply = _send(app, _instructions(round_number=11), {"log-db": log_db, "device-storage": str(storage),
                                                        "ledger-path": str(tmp_path / "l.json")})
    assert reply.has_error() and reply.error.reason == "policy-round-order"  # past the run's 10 planned rounds
    assert PriorStore(storage / PRIOR_FOLDER).current() is None


def test_a_simulation_slot_keeps_nothing_and_a_simulated_device_does(tmp_path, flower_task_identity):
    population = PopulationConfig(seed=0, num_users=8, days=5)
    received = []
    simulated = make_client_app(simulated_device_data, keep_prior=lambda *args: received.append(args[3]))
    instructions = _instructions(data=simulated_data(population, window=16))
    slot = RecordDict({"arrays": to_array_record(_arrays(1)), "config": ConfigRecord(to_config_items(instructions)),
                       "user": users_record([1, 2])})
    assert not _send(simulated, instructions, {}, content=slot).has_error()
    assert received == []
    assert not _send(simulated, instructions, {"partition-id": 3, "device-storage": str(tmp_path)}).has_error()
    assert received == ["train"]


def test_the_storage_is_named_or_sits_beside_the_log(tmp_path):
    assert device_storage_of({"log-db": str(tmp_path / "events.db")}) == tmp_path / "events.device"
    assert device_storage_of({"log-db": "x.db", "device-storage": str(tmp_path / "s")}) == tmp_path / "s"
    with pytest.raises(ValueError, match="neither 'device-storage' nor 'log-db'"):
        device_storage_of({"partition-id": 3})
