"""The ClientApp's DP-SGD noise and batches come from the device's own entropy: nothing the server sends fixes them.

Dropout, augmentation and plain shuffling follow the seed in the instructions (they protect nothing), so the same
instructions twice give the same model without record-level DP; with it the two models must differ, on a real
device even when the server asks for ``seeded`` noise. Only a synthetic user obeys ``seeded``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.client_app import app as device_app
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from privacy.record_level import RecordLevelDP
from protocol.instructions import DataInstructions, TrainInstructions, to_config_items
from protocol.records import to_array_record
from protocol.reply_layout import CONTRIBUTION, STATISTICS_ARRAY
from tests.helpers import announced
from simulations.federation.simulation_client_app import app as simulation_app
from simulations.federation.device_data import simulated_data
from simulations.population.population import PopulationConfig
from simulations.seed_logs import seed_device_logs

POPULATION = PopulationConfig(seed=0, num_users=20, days=7)
DATA = simulated_data(POPULATION, window=16)
MODEL = ModelConfig(bidirectional=False, hidden_size=8, num_layers=1)
RECORD = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=10.0, delta=1e-3)


def _message(record: RecordLevelDP | None, noise: str, device_dir: str) -> Message:
    torch.manual_seed(0)
    arrays = {k: v.numpy().copy() for k, v in PreferenceLSTM(MODEL).state_dict().items()}
    instructions = TrainInstructions(round=3, seed=11, model=MODEL, train=LocalTrainConfig(batch_size=8), data=DATA,
                                     clipping_norm=0.5, record=record, device_dir=device_dir, noise=noise, **announced())
    content = RecordDict({"arrays": to_array_record(arrays), "config": ConfigRecord(to_config_items(instructions))})
    return Message(content, dst_node_id=0, message_type="train")


def _trained_twice(node_config: dict, record, noise: str, device_dir: str) -> tuple[dict, dict]:
    """The arrays a node replies to the very same message, sent twice: a device's ClientApp for a log, the
    simulation's for a synthetic user."""
    app = simulation_app if "partition-id" in node_config else device_app
    replies = []
    for copy in range(2):  # a device's ledger refuses the same round twice: each copy keeps its own
        config = node_config | ({"ledger-path": f"{device_dir}/copy-{copy}.ledger.json"} if "log-db" in node_config else {})
        context = Context(run_id=1, node_id=0, node_config=config, state=RecordDict(), run_config={})
        replies.append(app(_message(record, noise, device_dir), context))
    return tuple({k: v.numpy() for k, v in r.content[CONTRIBUTION].items() if k != STATISTICS_ARRAY}  # type: ignore[return-value]
                 for r in replies)


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture
def real_device(tmp_path):
    [log] = seed_device_logs(tmp_path / "device", devices=1, seed=POPULATION.seed, days=POPULATION.days,
                             first_user=3)
    return {"log-db": str(log.path)}


def test_without_record_level_dp_the_same_instructions_train_the_same_model(flower_task_identity, tmp_path, real_device):
    assert _same(*_trained_twice({"partition-id": 3}, None, "secure", str(tmp_path)))
    assert _same(*_trained_twice(real_device, None, "secure", str(tmp_path)))


@pytest.mark.parametrize("noise", ["secure", "seeded"])
def test_a_real_devices_dp_sgd_noise_is_independent_of_every_instruction(flower_task_identity, tmp_path, real_device,
                                                                        noise):
    first, second = _trained_twice(real_device, RECORD, noise, str(tmp_path))
    assert all(not np.array_equal(first[k], second[k]) for k in first)


def test_a_synthetic_users_dp_sgd_noise_follows_the_seed_only_in_a_seeded_simulation(flower_task_identity, tmp_path):
    secure = _trained_twice({"partition-id": 3}, RECORD, "secure", str(tmp_path / "secure"))
    assert all(not np.array_equal(secure[0][k], secure[1][k]) for k in secure[0])
    assert _same(*_trained_twice({"partition-id": 3}, RECORD, "seeded", str(tmp_path / "seeded")))
