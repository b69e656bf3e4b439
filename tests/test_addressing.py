"""How a round's users reach the nodes: the jobs the dispatcher sends, what each message says, whose reply is whose."""

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from protocol.records import USERS_RECORD, joined_parts, slot_users
from server.addressing import Addressing
from tests.helpers import contribution

SLOTS, OWN_NODES = Addressing(slots=True, users_per_message=5), Addressing(slots=False, users_per_message=5)
SAMPLED: list[tuple[int | None, int]] = [(None, u) for u in range(16)]


def test_slot_messages_carry_up_to_users_per_message_users_in_sampled_order():
    assert [len(users) for _, users in SLOTS.jobs(SAMPLED, 2)] == [5, 5, 5, 1]
    assert [u for _, users in SLOTS.jobs(SAMPLED, 2) for u in users] == list(range(16))
    assert all(node is None for node, _ in SLOTS.jobs(SAMPLED, 2))  # the next free slot takes it


def test_a_small_round_gives_every_free_slot_a_message():
    assert [len(users) for _, users in SLOTS.jobs(SAMPLED, 4)] == [4, 4, 4, 4]
    assert [len(users) for _, users in SLOTS.jobs(SAMPLED[:3], 16)] == [1, 1, 1]
    assert [len(users) for _, users in SLOTS.jobs(SAMPLED[:3], 0)] == [3]  # every slot busy: the jobs wait as they are


def test_a_node_of_its_own_is_one_user_and_is_not_told_who_it_is():
    assert OWN_NODES.jobs([(7, 7), (9, 9)], 0) == [(7, (7,)), (9, (9,))]
    shared = RecordDict({"config": ConfigRecord({"round": 1})})
    assert USERS_RECORD not in OWN_NODES.content(shared, (7,)).config_records
    assert slot_users(SLOTS.content(shared, (3, 8))) == [3, 8] and USERS_RECORD not in shared.config_records


def test_each_user_gets_the_verdict_of_its_own_part(flower_task_identity):
    reference = {"w": np.zeros(2, dtype=np.float32)}
    honest = contribution({"w": np.ones(2, dtype=np.float32)})
    broken = contribution({"v": np.ones(2, dtype=np.float32)})
    reply = Message(joined_parts([broken, honest]), dst_node_id=0, message_type="train")
    kinds = [v.kind for v in SLOTS.train_verdicts((4, 9), reply, reference)]
    assert kinds == ["rejected", "contribution"]
    device_reply = Message(honest, dst_node_id=0, message_type="train")
    assert [v.kind for v in OWN_NODES.train_verdicts((4,), device_reply, reference)] == ["contribution"]
