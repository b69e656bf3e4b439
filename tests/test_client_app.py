"""What leaves the device: the ClientApp's replies carry model arrays and declared scalar metrics only (played by
synthetic users through the simulation's ClientApp, which runs the product ClientApp's functions)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from protocol.instructions import (DataInstructions, RecordLevelInstructions, TrainInstructions, from_config_items,
                                 to_config_items)
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from protocol.metrics import DECLINED_RECORD_BUDGET, EVAL_METRICS, TRAIN_METRICS
from protocol.records import USERS_RECORD, slot_users, to_array_record, user_parts, users_record
from simulations.federation.client_app import app
from simulations.federation.device_data import device_examples, population, population_of, simulated_data
from simulations.population.population import PopulationConfig
from simulations.population.world import PromptMix, World

POPULATION = PopulationConfig(seed=0, num_users=20, days=7)
DATA = simulated_data(POPULATION, window=16)


def _instructions(**changes) -> TrainInstructions:
    base = dict(round=1, seed=0, model=ModelConfig(), train=LocalTrainConfig(batch_size=8), data=DATA, clipping_norm=0.5)
    return TrainInstructions(**(base | changes))


def _message(kind: str, instructions: TrainInstructions) -> Message:
    arrays = {k: v.numpy().copy() for k, v in PreferenceLSTM().state_dict().items()}
    content = RecordDict({"arrays": to_array_record(arrays), "config": ConfigRecord(to_config_items(instructions))})
    return Message(content, dst_node_id=0, message_type=kind)


def _context(user_id: int) -> Context:
    return Context(run_id=1, node_id=0, node_config={"partition-id": user_id}, state=RecordDict(), run_config={})


def _strings_in(content: RecordDict) -> list[str]:
    out = list(content.keys())
    for record in content.values():
        out += [str(k) for k in record.keys()] + [v for v in record.values() if isinstance(v, str)]
    return out


def test_train_reply_holds_only_model_arrays_and_declared_scalars(flower_task_identity):
    torch.manual_seed(0)
    reply = app(_message("train", _instructions()), _context(3))
    content = reply.content
    assert set(content.array_records) == {"arrays"} and set(content.metric_records) == {"metrics"}
    assert not content.config_records
    assert set(content["arrays"].keys()) == set(PreferenceLSTM().state_dict())
    assert set(content["metrics"].keys()) == set(TRAIN_METRICS)
    assert all(isinstance(v, (int, float)) for v in content["metrics"].values())
    prompts = {e.prompt for e in population(0, 20, 7).user(3).events() if e.prompt}
    assert prompts and not prompts & set(_strings_in(content))


def test_user_level_update_leaves_the_device_clipped(flower_task_identity):
    message = _message("train", _instructions(clipping_norm=0.05))
    reply = app(message, _context(4))
    sent = {k: v.numpy() for k, v in message.content["arrays"].items()}
    back = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    norm = np.sqrt(sum(float(np.sum((back[k].astype(np.float64) - sent[k]) ** 2)) for k in sent))
    assert norm <= 0.05 * (1 + 1e-5) and reply.content["metrics"]["clipped"] == 1


def test_device_over_its_record_budget_declines_and_says_why(flower_task_identity, tmp_path):
    record = RecordLevelInstructions(noise_multiplier=0.5, max_grad_norm=1.0, target_epsilon=0.01, delta=1e-3)
    reply = app(_message("train", _instructions(record=record, device_dir=str(tmp_path))), _context(5))
    assert reply.content["metrics"]["declined"] == DECLINED_RECORD_BUDGET
    assert "record-level privacy budget" in reply.content["status"]["declined"]
    assert not reply.content.array_records


def test_record_level_ledger_persists_on_the_device_across_rounds(flower_task_identity, tmp_path):
    record = RecordLevelInstructions(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=50.0, delta=1e-3)
    first = app(_message("train", _instructions(record=record, device_dir=str(tmp_path))), _context(6))
    second = app(_message("train", _instructions(round=2, record=record, device_dir=str(tmp_path))), _context(6))
    eps1, eps2 = first.content["metrics"]["record-epsilon"], second.content["metrics"]["record-epsilon"]
    assert 0 < eps1 < eps2 and (tmp_path / "user-6.ledger.json").is_file()


def test_evaluate_reply_holds_only_declared_scalars(flower_task_identity):
    reply = app(_message("evaluate", _instructions()), _context(7))
    assert not reply.content.array_records and set(reply.content["metrics"].keys()) == set(EVAL_METRICS)
    assert 0.0 <= reply.content["metrics"]["eval-top1"] <= 1.0


def _slot_message(kind: str, instructions: TrainInstructions, users: list[int]) -> Message:
    torch.manual_seed(0)  # the same global model as ``_same_model_message``
    message = _message(kind, instructions)
    message.content[USERS_RECORD] = users_record(users)
    return message


def _same_model_message(kind: str, instructions: TrainInstructions) -> Message:
    torch.manual_seed(0)
    return _message(kind, instructions)


def test_a_slot_playing_several_users_replies_for_each_what_their_own_devices_would(flower_task_identity, tmp_path):
    """Users 3 and 4 in one message: the same updates and metrics as two device messages, in their order. A user
    over its record budget (5) sends only its metrics and status in its part."""
    record = RecordLevelInstructions(noise_multiplier=0.5, max_grad_norm=1.0, target_epsilon=0.01, delta=1e-3)
    instructions = _instructions(device_dir=str(tmp_path))
    joined = app(_slot_message("train", instructions, [3, 4]), _context(99)).content
    parts = user_parts(joined, 2)
    for user, part in zip((3, 4), parts):
        alone = app(_same_model_message("train", instructions), _context(user)).content
        assert set(part.keys()) == set(alone.keys()) == {"arrays", "metrics"}
        assert dict(part["metrics"]) == dict(alone["metrics"])
        for name, array in alone["arrays"].items():
            assert np.array_equal(part["arrays"][name].numpy(), array.numpy()), name
    assert not np.array_equal(parts[0]["arrays"]["head.weight"].numpy(), parts[1]["arrays"]["head.weight"].numpy())
    declined = user_parts(app(_slot_message("train", _instructions(record=record, device_dir=str(tmp_path)), [5]),
                              _context(99)).content, 1)[0]
    assert set(declined.keys()) == {"metrics", "status"} and declined["metrics"]["declined"] == DECLINED_RECORD_BUDGET


def test_a_slot_evaluates_each_user_it_is_told_to_play(flower_task_identity):
    joined = app(_slot_message("evaluate", _instructions(), [7, 8]), _context(99)).content
    for user, part in zip((7, 8), user_parts(joined, 2)):
        alone = app(_same_model_message("evaluate", _instructions()), _context(user)).content
        assert dict(part["metrics"]) == dict(alone["metrics"]) and set(EVAL_METRICS) == set(part["metrics"].keys())


@pytest.mark.parametrize("users", [[], ["3"], [True], 3])
def test_a_slot_message_naming_users_wrongly_is_refused_with_the_rule(users):
    content = RecordDict({USERS_RECORD: ConfigRecord({"user-ids": users})})
    with pytest.raises(ValueError, match="non-empty list of whole numbers"):
        slot_users(content)


def test_simulated_client_trains_on_the_world_the_server_configured(flower_task_identity):
    """The world crosses the ConfigRecord intact, and the client's examples are that world's user's, not today's."""
    busy = World(sessions_per_day=6.0, prompt_mix=PromptMix(vague=1.0, mood=0.0, genre=0.0))
    data = simulated_data(replace(POPULATION, world=busy), window=16)
    message = _message("train", _instructions(data=data))
    assert from_config_items(dict(message.content["config"])).data == data
    assert population_of(from_config_items(dict(message.content["config"])).data).world == busy
    reply = app(message, _context(3))
    sent_world = device_examples(data, 3)[0]
    assert reply.content["metrics"]["num-examples"] == len(sent_world)  # train.max_examples=0: all of them
    assert len(sent_world) > 2 * len(device_examples(DATA, 3)[0])
