"""Where a node's data comes from: its own SQLite log on a device, a synthetic user in simulation."""

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.client_app import app
from client.data_source import DeviceDataError, device_data
from client.log_store import LogStore
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from protocol.instructions import DataInstructions, TrainInstructions, to_config_items
from protocol.reply_layout import CONTRIBUTION, EVALUATION, SCORES_ARRAY, STATISTICS_ARRAY
from protocol.records import to_array_record
from model.features.examples import build_examples, split_recent
from privacy.record_level import RecordLevelDP
from simulations.federation.device_data import (
    _EncodedLogs,
    device_examples,
    population_from,
    simulated_data,
    simulated_device_data,
)
from simulations.population.population import PopulationConfig
from simulations import seed_logs
from simulations.seed_logs import SeedError, seed_device_logs
from tests.helpers import ROOT, announced

POPULATION = PopulationConfig(seed=0, num_users=20, days=7)
DATA = simulated_data(POPULATION, window=16)


def _log_of_user(tmp_path, user_id: int):
    [seeded] = seed_device_logs(tmp_path / f"u{user_id}", devices=1, seed=POPULATION.seed,
                                days=POPULATION.days, first_user=user_id)
    return seeded.path


def _same_examples(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("x", "lengths", "targets", "times"))


def test_a_log_db_node_trains_on_exactly_the_examples_of_its_log(tmp_path):
    path = _log_of_user(tmp_path, 3)
    data = device_data(DATA, {"log-db": str(path)})
    synthetic_train, synthetic_held_out = device_examples(DATA, 3)  # the same user's events, generated in memory
    assert len(data.train) > 0 and len(data.held_out) > 0
    assert _same_examples(data.train, synthetic_train) and _same_examples(data.held_out, synthetic_held_out)
    assert data.source == f"log {path.resolve()}"


def test_the_ledger_lives_next_to_the_log_unless_the_node_config_names_it(tmp_path):
    path = _log_of_user(tmp_path, 1)
    assert device_data(DATA, {"log-db": str(path)}).ledger_path == path.resolve().with_name("events.ledger.json")
    explicit = tmp_path / "private" / "ledger.json"
    assert device_data(DATA, {"log-db": str(path), "ledger-path": str(explicit)}).ledger_path == explicit


def test_a_synthetic_node_keeps_the_simulation_behaviour(tmp_path):
    data = simulated_device_data(DATA, {"partition-id": 4}, device_dir=str(tmp_path))
    assert data.device_id == 4 and data.ledger_path == tmp_path / "user-4.ledger.json" and data.synthetic
    assert simulated_device_data(DATA, {"partition-id": "4"}).ledger_path is None  # no device_dir, no ledger file


def test_the_simulations_data_source_reads_a_log_db_as_a_device_does(tmp_path):
    path = _log_of_user(tmp_path, 2)
    simulated, device = simulated_device_data(DATA, {"log-db": str(path)}), device_data(DATA, {"log-db": str(path)})
    assert _same_examples(simulated.train, device.train) and not simulated.synthetic and not device.synthetic


def test_a_devices_data_source_refuses_a_synthetic_user_and_names_the_simulations_app():
    with pytest.raises(DeviceDataError, match="'partition-id'.*simulations.federation.simulation_client_app"):
        device_data(DATA, {"partition-id": 4})


def test_the_device_seed_is_stable_for_a_log_and_differs_between_logs(tmp_path):
    a, b = _log_of_user(tmp_path, 1), _log_of_user(tmp_path, 2)
    assert device_data(DATA, {"log-db": str(a)}).device_id == device_data(DATA, {"log-db": str(a)}).device_id
    assert device_data(DATA, {"log-db": str(a)}).device_id != device_data(DATA, {"log-db": str(b)}).device_id


@pytest.mark.parametrize("node_config,message", [
    ({}, "node config names no data"),
    ({"log-db": "/x/events.db", "partition-id": 1}, "sets both 'log-db' and 'partition-id'"),
    ({"partition-id": "three"}, "'partition-id' must be a whole number"),
    ({"partition-id": True}, "'partition-id' must be a whole number"),
])
def test_a_node_config_without_one_clear_source_is_refused(node_config, message):
    with pytest.raises(DeviceDataError, match=message):
        simulated_device_data(DATA, node_config)


def test_a_missing_log_is_reported_with_the_node_config_key_and_path(tmp_path):
    missing = tmp_path / "nowhere" / "events.db"
    with pytest.raises(DeviceDataError, match=r"node config 'log-db' = .*nowhere.*no log store there"):
        device_data(DATA, {"log-db": str(missing)})
    assert not missing.exists()  # reading never creates a log


def test_a_file_that_is_not_a_log_store_is_refused(tmp_path):
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(DeviceDataError, match="'log-db'"):
        device_data(DATA, {"log-db": str(other)})


def test_unreadable_rows_are_skipped_and_the_rest_still_trains(tmp_path):
    path = _log_of_user(tmp_path, 2)
    before = device_data(DATA, {"log-db": str(path)})
    with sqlite3.connect(path) as conn:  # a row written by some other program, breaking the event contract
        conn.execute("INSERT INTO events (ts, utc_offset_min, kind, json_line) VALUES (4102444800, 0, 'bpm_set', '{}')")
    after = device_data(DATA, {"log-db": str(path)})
    assert _same_examples(after.train, before.train)


def test_an_empty_log_gives_no_examples(tmp_path):
    path = tmp_path / "new" / "events.db"
    LogStore.open(path).close()
    data = device_data(DATA, {"log-db": str(path)})
    assert len(data.train) == 0 and len(data.held_out) == 0


def test_a_synthetic_users_examples_are_the_same_on_every_call_and_built_from_its_events():
    events = population_from(POPULATION).user(6).events()
    expected = split_recent(build_examples(events, DATA.window), DATA.eval_fraction)
    for _ in range(2):  # built, then cut again from the cached encoded log
        train, held_out = device_examples(DATA, 6)
        assert _same_examples(train, expected[0]) and _same_examples(held_out, expected[1])


def test_the_encoded_log_cache_stays_within_its_memory_and_lets_the_least_recently_used_go():
    sizes = [_EncodedLogs(budget=2**40).get(POPULATION, user).nbytes for user in range(4)]
    cache = _EncodedLogs(budget=sum(sizes) - 1)  # room for any three of the four users
    first = [cache.get(POPULATION, user) for user in range(3)]
    assert cache.get(POPULATION, 0) is first[0]  # a hit, now the most recently used
    cache.get(POPULATION, 3)  # over budget: user 1, the least recently used, leaves
    assert cache.nbytes == sum(sizes) - sizes[1] <= cache.budget
    assert cache.get(POPULATION, 0) is first[0] and cache.get(POPULATION, 1) is not first[1]


# ------------------------------------------------------------------------------------------- through the app
def _message(kind: str, **changes) -> Message:
    base = dict(round=1, seed=0, model=ModelConfig(), train=LocalTrainConfig(batch_size=8, max_examples=16), data=DATA,
                clipping_norm=0.5, **announced())
    instructions = TrainInstructions(**(base | changes))
    arrays = {k: v.numpy().copy() for k, v in PreferenceLSTM().state_dict().items()}
    content = RecordDict({"arrays": to_array_record(arrays), "config": ConfigRecord(to_config_items(instructions))})
    return Message(content, dst_node_id=0, message_type=kind)


def _node(config: dict) -> Context:
    return Context(run_id=1, node_id=0, node_config=config, state=RecordDict(), run_config={})


def test_the_client_app_trains_and_evaluates_from_a_log_db_and_keeps_the_ledger_beside_it(tmp_path, flower_task_identity):
    path = _log_of_user(tmp_path, 5)
    record = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=10.0, delta=1e-3)
    reply = app(_message("train", record=record), _node({"log-db": str(path)}))
    assert reply.content[CONTRIBUTION][STATISTICS_ARRAY].numpy()[0] > 0  # it trained
    ledger = path.with_name("events.ledger.json")
    assert ledger.is_file() and json.loads(ledger.read_text())["history"]
    assert json.loads(ledger.read_text())["runs"]["test-run"]["last_round"] == 1  # it remembers the round it joined
    evaluation = app(_message("evaluate"), _node({"log-db": str(path)}))
    assert evaluation.content[EVALUATION][SCORES_ARRAY].numpy()[0] == 1.0  # it had recent points to score


def test_a_device_with_an_empty_log_sends_the_all_zero_contribution(tmp_path, flower_task_identity):
    path = tmp_path / "fresh" / "events.db"
    LogStore.open(path).close()
    reply = app(_message("train"), _node({"log-db": str(path)}))
    assert all(not np.any(v.numpy()) for v in reply.content[CONTRIBUTION].values())


def test_a_device_whose_log_is_missing_answers_with_a_code_not_its_path(tmp_path, flower_task_identity):
    """The error a device sends names no path: Flower would send the exception text, which holds it."""
    missing = tmp_path / "private" / "events.db"
    reply = app(_message("train"), _node({"log-db": str(missing)}))
    assert reply.has_error() and reply.error.reason == "device-data"
    assert str(tmp_path) not in str(reply.error.reason)


def test_seeding_refuses_to_mix_two_users_in_one_log(tmp_path):
    seed_device_logs(tmp_path, devices=2, days=3)
    with pytest.raises(SeedError, match="already holds"):
        seed_device_logs(tmp_path, devices=1, days=3)
    with pytest.raises(SeedError, match="devices must be >= 1"):
        seed_device_logs(tmp_path / "x", devices=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-1", "node-2"]


def test_seed_logs_with_zero_days_or_devices_is_refused_in_one_line_without_a_traceback(tmp_path):
    for option in (["--days", "0"], ["--devices", "0"], ["--days", "100000"]):
        result = subprocess.run([sys.executable, "-m", "simulations.seed_logs", "--out", str(tmp_path / "devices"),
                                 *option], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.startswith("error: ") and option[0].lstrip("-") in result.stderr


def test_every_seed_logs_option_has_help_text_and_defaults_are_shown():
    parser = seed_logs.build_parser()
    assert all(action.help for action in parser._actions)
    assert "(default: 21)" in parser.format_help() and "(default: 3)" in parser.format_help()


def test_seed_logs_writes_one_log_per_node_and_names_each_user(tmp_path, capsys):
    assert seed_logs.main(["--out", str(tmp_path), "--devices", "2", "--days", "3", "--first-user", "5"]) == 0
    printed = capsys.readouterr().out
    assert "synthetic user 5" in printed and "synthetic user 6" in printed
    assert (tmp_path / "node-2" / "events.db").is_file()
