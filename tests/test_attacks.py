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
from model.features.encoding import Examples
from model.log.vocab import GENRES
from model.network.networks import PreferenceLSTM
from protocol.instructions import AttackInstructions, from_config_items, to_config_items
from protocol.records import user_parts
from server.replies import judge_reply
from simulations.federation.client_app import app
from simulations.seed_logs import seed_device_logs
from tests.test_client_app import _context, _instructions, _message, _slot_message

GLOBAL = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.ones(2, dtype=np.float32)}
HONEST = {"w": np.full((3, 2), 0.5, dtype=np.float32), "b": np.full(2, 1.25, dtype=np.float32)}


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


def test_scale_and_sign_flip_multiply_the_update_not_the_weights():
    assert np.allclose(corrupt("scale", GLOBAL, HONEST, scale=10.0)["w"], 5.0)
    assert np.allclose(corrupt("scale", GLOBAL, HONEST, scale=10.0)["b"], 1.0 + 10 * 0.25)
    flipped = corrupt("sign_flip", GLOBAL, HONEST, scale=10.0)
    assert np.allclose(flipped["w"], -0.5) and np.allclose(flipped["b"], 0.75)
    assert all(a.dtype == np.float32 for a in flipped.values())


def test_malformed_attacks_break_exactly_the_reply_contract_they_name():
    assert all(np.isnan(a).all() for a in corrupt("nan_arrays", GLOBAL, HONEST, scale=1.0).values())
    assert set(corrupt("missing_array", GLOBAL, HONEST, scale=1.0)) == {"b"}
    assert set(corrupt("extra_array", GLOBAL, HONEST, scale=1.0)) == {"w", "b", EXTRA_ARRAY_NAME}
    for kind in ("none", "label_flip"):
        assert corrupt(kind, GLOBAL, HONEST, scale=10.0) is HONEST


def test_an_unknown_attack_kind_is_an_error_naming_the_kinds():
    with pytest.raises(ValueError, match="attack kind must be one of"):
        corrupt("backdoor", GLOBAL, HONEST, scale=1.0)


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
    context = Context(run_id=1, node_id=0, node_config={"log-db": str(log.path)}, state=RecordDict(), run_config={})
    replies, sent = [], {}
    for attack in (None, AttackInstructions(kind="sign_flip", fraction=1.0, scale=1.0)):
        torch.manual_seed(0)  # the same global model in both messages
        message = _message("train", _instructions(attack=attack, clipping_norm=None))
        sent = {k: v.numpy() for k, v in message.content["arrays"].items()}
        replies.append(device_app(message, context))
    honest, asked = ({k: v.numpy() for k, v in r.content["arrays"].items()} for r in replies)
    assert any(not np.array_equal(honest[k], sent[k]) for k in honest)  # a real update, which sign_flip would change
    assert all(np.array_equal(honest[k], asked[k]) for k in honest)


def test_attack_instructions_round_trip_through_the_config_record():
    instructions = _instructions(attack=AttackInstructions(kind="scale", fraction=0.25, scale=-3.0))
    assert from_config_items(to_config_items(instructions)) == instructions
    assert not any(k.startswith("attack") for k in to_config_items(_instructions()))  # honest runs send nothing


def _reply(kind: str, user: int, **changes):
    message = _message("train", _instructions(attack=AttackInstructions(kind=kind, fraction=1.0, scale=10.0), **changes))
    context = Context(run_id=1, node_id=0, node_config={"partition-id": user}, state=RecordDict(), run_config={})
    return message, app(message, context)


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_the_client_apps_malformed_replies_are_rejected_by_the_server(flower_task_identity, kind):
    message, reply = _reply(kind, 3)
    reference = {k: v.numpy() for k, v in message.content["arrays"].items()}
    assert judge_reply(reply, reference, max_examples=32).kind == "rejected"


@pytest.mark.parametrize("kind", sorted(set(ATTACK_KINDS) - set(MALFORMED_KINDS)))
def test_the_client_apps_well_formed_attacks_pass_the_reply_checks(flower_task_identity, kind):
    message, reply = _reply(kind, 3)
    reference = {k: v.numpy() for k, v in message.content["arrays"].items()}
    verdict = judge_reply(reply, reference, max_examples=32)
    assert verdict.kind == "update" and set(verdict.arrays) == set(PreferenceLSTM().state_dict())


def test_a_scaled_reply_is_the_honest_update_times_the_factor(flower_task_identity):
    torch.manual_seed(0)  # the same global model in both messages
    message, honest = _reply("none", 4, clipping_norm=None)
    torch.manual_seed(0)
    _, scaled = _reply("scale", 4, clipping_norm=None)
    sent = {k: v.numpy() for k, v in message.content["arrays"].items()}
    for name, value in sent.items():
        update = honest.content["arrays"][name].numpy() - value
        assert np.allclose(scaled.content["arrays"][name].numpy() - value, 10.0 * update, atol=1e-5)


def test_in_a_slot_message_each_user_plays_its_own_part_of_the_attack(flower_task_identity):
    """Users 3 and 4 in one slot message, sign_flip at a fraction that makes exactly one of them malicious: that
    user's part is its own honest update negated, the other part is honest (clipping off, so nothing rescales)."""
    fraction = next(f for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
                    if is_malicious(0, 3, f) != is_malicious(0, 4, f))
    attack = AttackInstructions(kind="sign_flip", fraction=fraction, scale=1.0)
    honest_message = _slot_message("train", _instructions(clipping_norm=None), [3, 4])
    sent = {k: v.numpy() for k, v in honest_message.content["arrays"].items()}
    honest = user_parts(app(honest_message, _context(99)).content, 2)
    played = user_parts(app(_slot_message("train", _instructions(attack=attack, clipping_norm=None), [3, 4]),
                            _context(99)).content, 2)
    for user, before, after in zip((3, 4), honest, played):
        factor = -1.0 if is_malicious(0, user, fraction) else 1.0
        assert any(not np.array_equal(before["arrays"][n].numpy(), v) for n, v in sent.items())  # a real update
        for name, value in sent.items():
            update = before["arrays"][name].numpy() - value
            assert np.allclose(after["arrays"][name].numpy() - value, factor * update, atol=1e-5), (user, name)
        assert dict(before["metrics"]) == dict(after["metrics"])  # an attacker mimics an honest reply's metrics
