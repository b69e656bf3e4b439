"""How a round's users reach the nodes: each user's own node, or node slots playing several users per message.

With ``simulation.nodes=0`` (and on a real deployment) every user is a node of its own: a message goes to that node
and its reply is that user's. With node slots (``simulation.nodes > 0``) the server names the users a slot plays in
the message's ``user`` record, up to ``simulation.users_per_message`` of them, and the reply holds each user's records
apart (``protocol.records``). Either way each user's part is judged as a device's reply would be (``server.replies``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, RecordDict

from protocol.records import USERS_RECORD, users_record
from server.replies import Verdict, evaluation_scores, judge_reply, judge_slot_reply, slot_evaluation_scores

Job = tuple[int | None, tuple[int, ...]]
"""What the dispatcher sends: (its own node, or None for the next free slot; the users the message is for)."""


@dataclass(frozen=True)
class Addressing:
    slots: bool
    users_per_message: int = 1

    def jobs(self, sampled: Sequence[tuple[int | None, int]], free_slots: int) -> list[Job]:
        """One job per (node, user) pair; with slots, up to ``users_per_message`` users per job, fewer when the
        round is too small to give each of the ``free_slots`` a job (so that every worker has work)."""
        if not self.slots:
            return [(node, (user,)) for node, user in sampled]
        users = [user for _, user in sampled]
        k = max(1, min(self.users_per_message, -(-len(users) // max(free_slots, 1))))
        return [(None, tuple(users[i:i + k])) for i in range(0, len(users), k)]

    def content(self, shared: RecordDict, users: tuple[int, ...]) -> RecordDict:
        """The round's shared records, plus (slots only) the users the slot should play; a user's own node is not told."""
        if not self.slots:
            return shared
        return RecordDict({**dict(shared.items()), USERS_RECORD: users_record(users)})

    def train_verdicts(self, users: tuple[int, ...], reply: Message, reference: dict[str, np.ndarray]) -> list[Verdict]:
        """One verdict per user the train reply answers for, in the order of ``users``."""
        if self.slots:
            return judge_slot_reply(reply, len(users), reference)
        return [judge_reply(reply, reference)]

    def evaluation_scores(self, users: tuple[int, ...], reply: Message) -> list[np.ndarray | None]:
        """Each user's checked evaluation scores (None for a failed or malformed part), in the order of ``users``."""
        return slot_evaluation_scores(reply, len(users)) if self.slots else [evaluation_scores(reply)]
