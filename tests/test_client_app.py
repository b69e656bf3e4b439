"""What leaves the device: the ClientApp's replies carry its bounded contribution or scores only, and errors carry a
reason code (played by synthetic users through the simulation's ClientApp, which runs the product ClientApp's
functions)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.device_ledger import DeviceLedger
from client.local_update import local_update
from privacy.contribution import STATISTIC_WEIGHT
from protocol.instructions import (DataInstructions, RecordLevelInstructions, TrainInstructions, from_config_items,
                                 to_config_items)
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from protocol.records import USERS_RECORD, slot_users, to_array_record, user_parts, users_record
from protocol.reply_layout import CONTRIBUTION, EVAL_SCORES, EVALUATION, REASON_CODES, SCORES_ARRAY, STATISTICS_ARRAY
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


def _contribution(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content[CONTRIBUTION].items()}


def test_train_reply_holds_only_the_contribution(flower_task_identity):
    torch.manual_seed(0)
    reply = app(_message("train", _instructions()), _context(3))
    content = reply.content
    assert list(content.keys()) == [CONTRIBUTION] and set(content.array_records) == {CONTRIBUTION}
    assert set(content[CONTRIBUTION].keys()) == set(PreferenceLSTM().state_dict()) | {STATISTICS_ARRAY}
    statistics = content[CONTRIBUTION][STATISTICS_ARRAY].numpy()
    assert statistics.shape == (3,) and np.all((0 <= statistics) & (statistics <= STATISTIC_WEIGHT * 0.5 + 1e-7))
    prompts = {e.prompt for e in population(0, 20, 7).user(3).events() if e.prompt}
    assert prompts and not prompts & set(_strings_in(content))


def test_user_level_update_leaves_the_device_clipped(flower_task_identity):
    reply = app(_message("train", _instructions(clipping_norm=0.05)), _context(4))
    contribution = _contribution(reply)
    statistics = contribution.pop(STATISTICS_ARRAY)
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in contribution.values()))
    assert norm <= 0.05 * (1 + 1e-5)
    assert statistics[0] == pytest.approx(0.005) and statistics[1] == 0.0  # participated; clipped


def test_device_over_its_record_budget_sends_the_all_zero_contribution(flower_task_identity, tmp_path):
    """A decline looks like any contribution on the wire (under SecAgg+ the server cannot tell it apart); why it
    declined stays on the device."""
    record = RecordLevelInstructions(noise_multiplier=0.5, max_grad_norm=1.0, target_epsilon=0.01, delta=1e-3)
    reply = app(_message("train", _instructions(record=record, device_dir=str(tmp_path))), _context(5))
    contribution = _contribution(reply)
    assert set(contribution) == set(PreferenceLSTM().state_dict()) | {STATISTICS_ARRAY}
    assert all(not np.any(v) for v in contribution.values())


def test_record_level_ledger_persists_on_the_device_across_rounds(flower_task_identity, tmp_path):
    record = RecordLevelInstructions(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=50.0, delta=1e-3)
    app(_message("train", _instructions(record=record, device_dir=str(tmp_path))), _context(6))
    ledger = tmp_path / "user-6.ledger.json"
    eps1 = DeviceLedger(ledger).rdp_epsilon(delta=1e-3)
    app(_message("train", _instructions(round=2, record=record, device_dir=str(tmp_path))), _context(6))
    assert 0 < eps1 < DeviceLedger(ledger).rdp_epsilon(delta=1e-3)


def test_under_record_level_dp_alone_the_loss_is_not_sent(flower_task_identity, tmp_path):
    """The loss is computed on raw batches: no mechanism covers it unless user-level noise will."""
    record = RecordLevelInstructions(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=50.0, delta=1e-3)
    alone = _contribution(app(_message("train", _instructions(record=record, clipping_norm=None,
                                                               device_dir=str(tmp_path))), _context(6)))
    assert alone[STATISTICS_ARRAY].tolist() == [1.0, 1.0, 0.0]
    covered = _contribution(app(_message("train", _instructions()), _context(6)))
    assert covered[STATISTICS_ARRAY][2] > 0


def test_evaluate_reply_holds_only_the_bounded_scores(flower_task_identity):
    reply = app(_message("evaluate", _instructions()), _context(7))
    assert list(reply.content.keys()) == [EVALUATION] and list(reply.content[EVALUATION].keys()) == [SCORES_ARRAY]
    scores = reply.content[EVALUATION][SCORES_ARRAY].numpy()
    assert scores.shape == (len(EVAL_SCORES),) and scores[0] == 1.0 and np.all((0 <= scores) & (scores <= 1))


def test_an_error_reply_carries_a_reason_code_never_the_exception_text(flower_task_identity):
    """A message the app cannot use (here arrays that do not fit the model) is answered with a fixed code."""
    message = _message("train", _instructions(model=ModelConfig(hidden_size=7)))
    reply = app(message, _context(3))
    assert reply.has_error() and reply.error.reason == "bad-instructions" and reply.error.reason in REASON_CODES
    unreadable = Message(RecordDict({"config": ConfigRecord({"round": "one"})}), dst_node_id=0, message_type="train")
    assert app(unreadable, _context(3)).error.reason == "bad-instructions"


def _slot_message(kind: str, instructions: TrainInstructions, users: list[int]) -> Message:
    torch.manual_seed(0)  # the same global model as ``_same_model_message``
    message = _message(kind, instructions)
    message.content[USERS_RECORD] = users_record(users)
    return message


def _same_model_message(kind: str, instructions: TrainInstructions) -> Message:
    torch.manual_seed(0)
    return _message(kind, instructions)


def test_a_slot_playing_several_users_replies_for_each_what_their_own_devices_would(flower_task_identity, tmp_path):
    """Users 3 and 4 in one message: the same contributions as two device messages, in their order. A user over its
    record budget (5) sends the all-zero contribution in its part."""
    record = RecordLevelInstructions(noise_multiplier=0.5, max_grad_norm=1.0, target_epsilon=0.01, delta=1e-3)
    instructions = _instructions(device_dir=str(tmp_path))
    joined = app(_slot_message("train", instructions, [3, 4]), _context(99)).content
    parts = user_parts(joined, 2)
    assert len(joined) == 2
    for user, part in zip((3, 4), parts):
        alone = app(_same_model_message("train", instructions), _context(user)).content
        assert set(part.keys()) == set(alone.keys()) == {CONTRIBUTION}
        for name, array in alone[CONTRIBUTION].items():
            assert np.array_equal(part[CONTRIBUTION][name].numpy(), array.numpy()), name
    assert not np.array_equal(parts[0][CONTRIBUTION]["head.weight"].numpy(), parts[1][CONTRIBUTION]["head.weight"].numpy())
    declined = user_parts(app(_slot_message("train", _instructions(record=record, device_dir=str(tmp_path)), [5]),
                              _context(99)).content, 1)[0]
    assert all(not np.any(v.numpy()) for v in declined[CONTRIBUTION].values())


def test_a_slot_evaluates_each_user_it_is_told_to_play(flower_task_identity):
    joined = app(_slot_message("evaluate", _instructions(), [7, 8]), _context(99)).content
    for user, part in zip((7, 8), user_parts(joined, 2)):
        alone = app(_same_model_message("evaluate", _instructions()), _context(user)).content
        assert np.array_equal(part[EVALUATION][SCORES_ARRAY].numpy(), alone[EVALUATION][SCORES_ARRAY].numpy())


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
    torch.manual_seed(0)
    message = _message("train", _instructions(data=data))
    reply = app(message, _context(3))
    sent_world = device_examples(data, 3)[0]
    assert len(sent_world) > 2 * len(device_examples(DATA, 3)[0])
    global_arrays = {k: v.numpy() for k, v in message.content["arrays"].items()}
    expected = local_update(global_arrays, _instructions(data=data), sent_world, DeviceLedger(None), 3, simulated=True)
    for name, value in expected.update.items():  # trained on that world's user, all of its examples
        assert np.allclose(_contribution(reply)[name], value, atol=1e-6), name
