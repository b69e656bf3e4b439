"""Hostile simulated clients (simulations/federation/attacks.py): who is malicious, what each attack sends, that the server's
reply checks reject the malformed ones from the simulation's ClientApp (the attack mod around the product's
functions), and that a device's ClientApp never attacks."""

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from simulations.federation.attacks import (
    ATTACK_KINDS,
    EXTRA_ARRAY_NAME,
    LABEL_PERMUTATION,
    MALFORMED_KINDS,
    attack_of,
    corrupt,
    flip_labels,
    is_malicious,
)
from client.client_app import app as device_app
from model.features.examples import Examples
from model.log.vocab import GENRES
from model.network.networks import PreferenceLSTM
from protocol.instructions import AttackInstructions, from_config_items, to_config_items
from protocol.records import user_parts
from protocol.reply_layout import CONTRIBUTION, STATISTICS_ARRAY
from server.replies import judge_reply
from simulations.federation.simulation_client_app import app
from simulations.seed_logs import seed_device_logs
from tests.helpers import announced, app_message, partition_context, slot_message, train_instructions

STATS = np.array([0.05, 0.05, 0.02], dtype=np.float32)
HONEST = {"w": np.full((3, 2), 0.5, dtype=np.float32), "b": np.full(2, 0.25, dtype=np.float32), STATISTICS_ARRAY: STATS}


def test_the_malicious_choice_depends_on_seed_user_and_fraction_alone():
    first = [is_malicious(7, u, 0.3) for u in range(2000)]
    assert first == [is_malicious(7, u, 0.3) for u in range(2000)]
    assert first != [is_malicious(8, u, 0.3) for u in range(2000)]
    assert sum(first) / len(first) == pytest.approx(0.3, abs=0.04)


def test_a_larger_fraction_keeps_every_user_a_smaller_one_chose():
    for u in range(500):
        assert not is_malicious(0, u, 0.0) and is_malicious(0, u, 1.0)
        assert is_malicious(0, u, 0.1) <= is_malicious(0, u, 0.2) <= is_malicious(0, u, 0.5)
    assert is_malicious(-3, 2**70, 1.0)  # any integers


def test_a_fraction_outside_0_to_1_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]; found 1.5"):
        is_malicious(0, 1, 1.5)


def test_scale_and_sign_flip_multiply_the_update_and_keep_the_statistics():
    scaled = corrupt("scale", HONEST, scale=10.0)
    assert np.allclose(scaled["w"], 5.0) and np.allclose(scaled["b"], 2.5) and np.array_equal(scaled[STATISTICS_ARRAY], STATS)
    flipped = corrupt("sign_flip", HONEST, scale=10.0)
    assert np.allclose(flipped["w"], -0.5) and np.allclose(flipped["b"], -0.25)
    assert all(a.dtype == np.float32 for a in flipped.values())


def test_malformed_attacks_break_exactly_the_reply_contract_they_name():
    assert all(np.isnan(a).all() for a in corrupt("nan_arrays", HONEST, scale=1.0).values())
    overflow = corrupt("overflow", HONEST, scale=1.0)
    assert overflow["w"].dtype == np.float64 and np.all(np.isfinite(overflow["w"]))
    assert not np.all(np.isfinite(overflow["w"].astype(np.float32)))  # Inf in the model's precision
    assert set(corrupt("missing_array", HONEST, scale=1.0)) == {"b", STATISTICS_ARRAY}
    assert set(corrupt("extra_array", HONEST, scale=1.0)) == {"w", "b", STATISTICS_ARRAY, EXTRA_ARRAY_NAME}
    for kind in ("none", "label_flip"):
        assert corrupt(kind, HONEST, scale=10.0) is HONEST


def test_an_unknown_attack_kind_is_an_error_naming_the_kinds():
    with pytest.raises(ValueError, match="attack kind must be one of"):
        corrupt("backdoor", HONEST, scale=1.0)


def test_label_flip_permutes_every_genre_to_another_and_leaves_inputs_alone():
    assert sorted(LABEL_PERMUTATION) == list(range(len(GENRES)))
    assert all(LABEL_PERMUTATION[g] != g for g in range(len(GENRES)))
    examples = Examples(torch.rand(8, 4, 3), torch.full((8,), 4), torch.arange(8), torch.zeros(8, dtype=torch.float64))
    flipped = flip_labels(examples)
    assert flipped.targets.tolist() == [7 - g for g in range(8)] and torch.equal(flipped.x, examples.x)


def test_only_a_malicious_user_of_an_attacking_round_plays_the_attack():
    attack = AttackInstructions(kind="sign_flip", fraction=1.0, scale=1.0)
    assert attack_of(attack, seed=0, user_id=3) == "sign_flip"
    assert attack_of(AttackInstructions(kind="sign_flip", fraction=0.0, scale=1.0), seed=0, user_id=3) == "none"
    assert attack_of(None, seed=0, user_id=3) == "none"


def test_a_devices_client_app_never_plays_an_attack(flower_task_identity, tmp_path):
    """The same message to a device's ClientApp with and without an attack named: the same honest reply."""
    [log] = seed_device_logs(tmp_path, devices=1, days=7, first_user=3)
    replies = []
    for attack in (None, AttackInstructions(kind="sign_flip", fraction=1.0, scale=1.0)):
        torch.manual_seed(0)  # the same global model in both messages
        context = Context(run_id=1, node_id=0, node_config={"log-db": str(log.path), "ledger-path": str(tmp_path / f"{attack}.json")},
                          state=RecordDict(), run_config={})  # a fresh ledger each: the same round twice is refused
        replies.append(device_app(app_message("train", train_instructions(attack=attack, **announced())), context))
    honest, asked = ({k: v.numpy() for k, v in r.content[CONTRIBUTION].items()} for r in replies)
    assert any(np.any(honest[k]) for k in honest if k != STATISTICS_ARRAY)  # a real update, which sign_flip would change
    assert all(np.array_equal(honest[k], asked[k]) for k in honest)


def test_attack_instructions_round_trip_through_the_config_record():
    instructions = train_instructions(attack=AttackInstructions(kind="scale", fraction=0.25, scale=-3.0))
    assert from_config_items(to_config_items(instructions)) == instructions
    assert not any(k.startswith("attack") for k in to_config_items(train_instructions()))  # honest runs send nothing


def _reply(kind: str, user: int, **changes):
    attack = AttackInstructions(kind=kind, fraction=1.0, scale=10.0)
    message = app_message("train", train_instructions(attack=attack, **changes))
    context = Context(run_id=1, node_id=0, node_config={"partition-id": user}, state=RecordDict(), run_config={})
    return message, app(message, context)


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_the_client_apps_malformed_replies_are_rejected_by_the_server(flower_task_identity, kind):
    message, reply = _reply(kind, 3)
    reference = {k: v.numpy() for k, v in message.content["arrays"].items()}
    assert judge_reply(reply, reference).kind == "rejected"


@pytest.mark.parametrize("kind", sorted(set(ATTACK_KINDS) - set(MALFORMED_KINDS)))
def test_the_client_apps_well_formed_attacks_pass_the_reply_checks(flower_task_identity, kind):
    message, reply = _reply(kind, 3)
    reference = {k: v.numpy() for k, v in message.content["arrays"].items()}
    verdict = judge_reply(reply, reference)
    assert verdict.kind == "contribution" and set(verdict.update) == set(PreferenceLSTM().state_dict())


def test_a_scaled_reply_is_the_honest_update_times_the_factor(flower_task_identity):
    torch.manual_seed(0)  # the same global model in both messages
    message, honest = _reply("none", 4, clipping_norm=None)
    torch.manual_seed(0)
    _, scaled = _reply("scale", 4, clipping_norm=None)
    for name in message.content["arrays"]:
        update = honest.content[CONTRIBUTION][name].numpy()
        assert np.any(update) and np.allclose(scaled.content[CONTRIBUTION][name].numpy(), 10.0 * update, atol=1e-5)


def test_in_a_slot_message_each_user_plays_its_own_part_of_the_attack(flower_task_identity):
    """Users 3 and 4 in one slot message, sign_flip at a fraction that makes exactly one of them malicious: that
    user's part is its own honest update negated, the other part is honest (clipping off, so nothing rescales)."""
    fraction = next(f for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
                    if is_malicious(0, 3, f) != is_malicious(0, 4, f))
    attack = AttackInstructions(kind="sign_flip", fraction=fraction, scale=1.0)
    honest_message = slot_message("train", train_instructions(clipping_norm=None), [3, 4])
    names = list(honest_message.content["arrays"])
    honest = user_parts(app(honest_message, partition_context(99)).content, 2)
    played = user_parts(app(slot_message("train", train_instructions(attack=attack, clipping_norm=None), [3, 4]),
                            partition_context(99)).content, 2)
    for user, before, after in zip((3, 4), honest, played):
        factor = -1.0 if is_malicious(0, user, fraction) else 1.0
        assert any(np.any(before[CONTRIBUTION][n].numpy()) for n in names)  # a real update
        for name in names:
            update = before[CONTRIBUTION][name].numpy()
            assert np.allclose(after[CONTRIBUTION][name].numpy(), factor * update, atol=1e-5), (user, name)
        statistics = (before[CONTRIBUTION][STATISTICS_ARRAY].numpy(), after[CONTRIBUTION][STATISTICS_ARRAY].numpy())
        assert np.array_equal(*statistics)  # an attacker mimics an honest contribution's statistics
