"""What leaves the device: the ClientApp's replies carry its bounded contribution or scores only, and errors carry a
reason code (played by synthetic users through the simulation's ClientApp, which runs the product ClientApp's
functions)."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from client.device_ledger import DeviceLedger
from client.local_update import local_update
from privacy.contribution import STATISTIC_WEIGHT
from protocol.instructions import TrainInstructions, from_config_items
from model.network.networks import ModelConfig, PreferenceLSTM
from privacy.record_level import RecordLevelDP
from protocol.records import USERS_RECORD, slot_users, user_parts
from protocol.reply_layout import CONTRIBUTION, EVAL_SCORES, EVALUATION, REASON_CODES, SCORES_ARRAY, STATISTICS_ARRAY
from simulations.federation.simulation_client_app import app
from simulations.federation.device_data import device_examples, population, population_of, simulated_data
from simulations.population.world import PromptMix, World
from tests.helpers import CLIENT_POPULATION, app_message, partition_context, slot_message, train_instructions

DATA = simulated_data(CLIENT_POPULATION, window=16)
"""The data ``train_instructions`` point at."""


def _strings_in(content: RecordDict) -> list[str]:
    out = list(content.keys())
    for record in content.values():
        out += [str(k) for k in record.keys()] + [v for v in record.values() if isinstance(v, str)]
    return out


def _contribution(reply: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in reply.content[CONTRIBUTION].items()}


def test_train_reply_holds_only_the_contribution(flower_task_identity):
    torch.manual_seed(0)
    reply = app(app_message("train", train_instructions()), partition_context(3))
    content = reply.content
    assert list(content.keys()) == [CONTRIBUTION] and set(content.array_records) == {CONTRIBUTION}
    assert set(content[CONTRIBUTION].keys()) == set(PreferenceLSTM().state_dict()) | {STATISTICS_ARRAY}
    statistics = content[CONTRIBUTION][STATISTICS_ARRAY].numpy()
    assert statistics.shape == (3,) and np.all((0 <= statistics) & (statistics <= STATISTIC_WEIGHT * 0.5 + 1e-7))
    prompts = {e.prompt for e in population(0, 20, 7).user(3).events() if e.prompt}
    assert prompts and not prompts & set(_strings_in(content))


def test_user_level_update_leaves_the_device_clipped(flower_task_identity):
    reply = app(app_message("train", train_instructions(clipping_norm=0.05)), partition_context(4))
    contribution = _contribution(reply)
    statistics = contribution.pop(STATISTICS_ARRAY)
    norm = np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in contribution.values()))
    assert norm <= 0.05 * (1 + 1e-5)
    assert statistics[0] == pytest.approx(0.005) and statistics[1] == 0.0  # participated; clipped


def test_device_over_its_record_budget_sends_the_all_zero_contribution(flower_task_identity, tmp_path):
    """A decline looks like any contribution on the wire (under SecAgg+ the server cannot tell it apart); why it
    declined stays on the device."""
    record = RecordLevelDP(noise_multiplier=0.5, max_grad_norm=1.0, target_epsilon=0.01, delta=1e-3)
    reply = app(app_message("train", train_instructions(record=record, device_dir=str(tmp_path))), partition_context(5))
    contribution = _contribution(reply)
    assert set(contribution) == set(PreferenceLSTM().state_dict()) | {STATISTICS_ARRAY}
    assert all(not np.any(v) for v in contribution.values())


def test_record_level_ledger_persists_on_the_device_across_rounds(flower_task_identity, tmp_path):
    record = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=50.0, delta=1e-3)
    app(app_message("train", train_instructions(record=record, device_dir=str(tmp_path))), partition_context(6))
    ledger = tmp_path / "user-6.ledger.json"
    eps1 = DeviceLedger(ledger).rdp_epsilon(delta=1e-3)
    app(app_message("train", train_instructions(round=2, record=record, device_dir=str(tmp_path))),
        partition_context(6))
    assert 0 < eps1 < DeviceLedger(ledger).rdp_epsilon(delta=1e-3)


def test_under_record_level_dp_alone_the_loss_is_not_sent(flower_task_identity, tmp_path):
    """The loss is computed on raw batches: no mechanism covers it unless user-level noise will."""
    record = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=50.0, delta=1e-3)
    alone = _contribution(app(app_message("train", train_instructions(record=record, clipping_norm=None,
                                                               device_dir=str(tmp_path))), partition_context(6)))
    assert alone[STATISTICS_ARRAY].tolist() == [1.0, 1.0, 0.0]
    covered = _contribution(app(app_message("train", train_instructions()), partition_context(6)))
    assert covered[STATISTICS_ARRAY][2] > 0


def test_evaluate_reply_holds_only_the_bounded_scores(flower_task_identity):
    reply = app(app_message("evaluate", train_instructions()), partition_context(7))
    assert list(reply.content.keys()) == [EVALUATION] and list(reply.content[EVALUATION].keys()) == [SCORES_ARRAY]
    scores = reply.content[EVALUATION][SCORES_ARRAY].numpy()
    assert scores.shape == (len(EVAL_SCORES),) and scores[0] == 1.0 and np.all((0 <= scores) & (scores <= 1))


def test_an_error_reply_carries_a_reason_code_never_the_exception_text(flower_task_identity):
    """A message the app cannot use (here arrays that do not fit the model) is answered with a fixed code."""
    message = app_message("train", train_instructions(model=ModelConfig(hidden_size=7)))
    reply = app(message, partition_context(3))
    assert reply.has_error() and reply.error.reason == "bad-instructions" and reply.error.reason in REASON_CODES
    unreadable = Message(RecordDict({"config": ConfigRecord({"round": "one"})}), dst_node_id=0, message_type="train")
    assert app(unreadable, partition_context(3)).error.reason == "bad-instructions"


def _same_model_message(kind: str, instructions: TrainInstructions) -> Message:
    torch.manual_seed(0)
    return app_message(kind, instructions)


def test_a_slot_playing_several_users_replies_for_each_what_their_own_devices_would(flower_task_identity, tmp_path):
    """Users 3 and 4 in one message: the same contributions as two device messages, in their order. A user over its
    record budget (5) sends the all-zero contribution in its part."""
    record = RecordLevelDP(noise_multiplier=0.5, max_grad_norm=1.0, target_epsilon=0.01, delta=1e-3)
    instructions = train_instructions(device_dir=str(tmp_path))
    joined = app(slot_message("train", instructions, [3, 4]), partition_context(99)).content
    parts = user_parts(joined, 2)
    assert len(joined) == 2
    for user, part in zip((3, 4), parts):
        alone = app(_same_model_message("train", instructions), partition_context(user)).content
        assert set(part.keys()) == set(alone.keys()) == {CONTRIBUTION}
        for name, array in alone[CONTRIBUTION].items():
            assert np.array_equal(part[CONTRIBUTION][name].numpy(), array.numpy()), name
    assert not np.array_equal(parts[0][CONTRIBUTION]["head.weight"].numpy(), parts[1][CONTRIBUTION]["head.weight"].numpy())
    declined = user_parts(app(slot_message("train", train_instructions(record=record, device_dir=str(tmp_path)), [5]),
                              partition_context(99)).content, 1)[0]
    assert all(not np.any(v.numpy()) for v in declined[CONTRIBUTION].values())


def test_a_slot_evaluates_each_user_it_is_told_to_play(flower_task_identity):
    joined = app(slot_message("evaluate", train_instructions(), [7, 8]), partition_context(99)).content
    for user, part in zip((7, 8), user_parts(joined, 2)):
        alone = app(_same_model_message("evaluate", train_instructions()), partition_context(user)).content
        assert np.array_equal(part[EVALUATION][SCORES_ARRAY].numpy(), alone[EVALUATION][SCORES_ARRAY].numpy())


@pytest.mark.parametrize("users", [[], ["3"], [True], 3])
def test_a_slot_message_naming_users_wrongly_is_refused_with_the_rule(users):
    content = RecordDict({USERS_RECORD: ConfigRecord({"user-ids": users})})
    with pytest.raises(ValueError, match="non-empty list of whole numbers"):
        slot_users(content)


def test_simulated_client_trains_on_the_world_the_server_configured(flower_task_identity):
    """The world crosses the ConfigRecord intact, and the client's examples are that world's user's, not today's."""
    busy = World(sessions_per_day=6.0, prompt_mix=PromptMix(vague=1.0, mood=0.0, genre=0.0))
    data = simulated_data(replace(CLIENT_POPULATION, world=busy), window=16)
    message = app_message("train", train_instructions(data=data))
    assert from_config_items(dict(message.content["config"])).data == data
    assert population_of(from_config_items(dict(message.content["config"])).data).world == busy
    torch.manual_seed(0)
    message = app_message("train", train_instructions(data=data))
    reply = app(message, partition_context(3))
    sent_world = device_examples(data, 3)[0]
    assert len(sent_world) > 2 * len(device_examples(DATA, 3)[0])
    global_arrays = {k: v.numpy() for k, v in message.content["arrays"].items()}
    expected = local_update(global_arrays, train_instructions(data=data), sent_world, DeviceLedger(None), 3,
                            simulated=True)
    for name, value in expected.update.items():  # trained on that world's user, all of its examples
        assert np.allclose(_contribution(reply)[name], value, atol=1e-6), name
