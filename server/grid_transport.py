"""A round's transport over Flower's grid: Messages to the nodes, each user's part of a reply judged on arrival.

Every user is a node of its own (a deployment, or ``simulation.nodes=0``), or node slots play the sampled users in
turn, several per message (``server.addressing``). Replies are judged as a device's would be (``server.replies``):
errors, time-outs and malformed replies are counted, never aggregated.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from protocol.instructions import TrainInstructions, to_config_items
from protocol.records import to_array_record
from protocol.reply_layout import CHECK_IN, CHECK_IN_QUERY, JOINED
from server.addressing import Addressing
from server.grid_io import RoundChannel
from server.replies import Verdict

Arrays = dict[str, np.ndarray]


class GridTransport:
    """Sends a round's Messages to the nodes of ``channel``'s grid and yields each user's verdict.

    Args:
        channel: the run's channel (it remembers messages still in flight across rounds).
        addressing: a node per user, or slots playing ``users_per_message`` users per message.
        node_ids: the connected nodes.
        num_users: the simulated users the slots play (slot mode); unused otherwise.
        timeout_s: how long a round waits for replies.
    """

    def __init__(self, channel: RoundChannel, addressing: Addressing, node_ids: list[int], *, num_users: int,
                 timeout_s: float) -> None:
        self.channel, self.addressing, self.node_ids = channel, addressing, node_ids
        self.num_users, self.timeout_s = num_users, timeout_s
        self._busy: set[int] = set()

    @property
    def grid(self) -> Grid:
        return self.channel.grid

    def candidates(self) -> Sequence[int]:
        """Slot mode samples the users (Poisson over the whole population); otherwise the connected nodes."""
        return range(self.num_users) if self.addressing.slots else self.node_ids

    def reachable(self, chosen: list[int]) -> list[int]:
        """All sampled users in slot mode (the free slots play them); otherwise the sampled nodes not still busy."""
        self._busy = self.channel.busy_nodes()
        return list(chosen) if self.addressing.slots else [n for n in chosen if n not in self._busy]

    def _sampled_and_slots(self, users: list[int]) -> tuple[list[tuple[int | None, int]], list[int]]:
        if self.addressing.slots:
            return [(None, u) for u in users], [n for n in self.node_ids if n not in self._busy]
        return [(n, n) for n in users], []

    def _content(self, arrays: Arrays, instructions: TrainInstructions) -> RecordDict:
        return RecordDict({"arrays": to_array_record(arrays),
                           "config": ConfigRecord(to_config_items(instructions))})

    def train(self, server_round: int, arrays: Arrays, instructions: TrainInstructions,
              users: list[int]) -> Iterator[tuple[int, Verdict]]:
        """Each user's verdict as its (slot's) reply arrives; the owner is the user (slot mode) or its node."""
        content = self._content(arrays, instructions)

        def message(node: int, message_users: tuple[int, ...]) -> Message:
            return Message(self.addressing.content(content, message_users), dst_node_id=node,
                           message_type=MessageType.TRAIN, group_id=str(server_round), ttl=3 * self.timeout_s)

        sampled, slots = self._sampled_and_slots(users)
        jobs = self.addressing.jobs(sampled, len(slots))
        for message_users, reply in self.channel.dispatch(jobs, slots, message, timeout_s=self.timeout_s):
            verdicts = self.addressing.train_verdicts(message_users, reply, arrays)
            yield from zip(message_users, verdicts)

    def check_in(self, server_round: int, config: dict, nodes: list[int]) -> list[int]:
        """``privacy=distributed``: ask ``nodes`` whether they join round ``server_round`` (each decides by its own
        coin, ``client.client_app``); the nodes that answered yes, in order. An error, a time-out or a reply that is
        not exactly one bool counts as no."""
        messages = [Message(RecordDict({"config": ConfigRecord(config)}), dst_node_id=n,
                            message_type=f"{MessageType.QUERY}.{CHECK_IN_QUERY}", group_id=str(server_round),
                            ttl=self.timeout_s) for n in nodes]
        joined = set()
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout_s):
            if reply.has_error() or list(reply.content.keys()) != [CHECK_IN]:
                continue
            record = reply.content.config_records.get(CHECK_IN)
            if record is not None and list(record.keys()) == [JOINED] and record[JOINED] is True:
                joined.add(reply.metadata.src_node_id)
        return [n for n in nodes if n in joined]

    def evaluate(self, arrays: Arrays, instructions: TrainInstructions,
                 users: list[int]) -> tuple[int, list[np.ndarray]] | None:
        """How many users answered, and the checked scores of those whose reply was well formed; None when there was
        nobody to ask."""
        self._busy = self.channel.busy_nodes()
        sampled, slots = self._sampled_and_slots(users)
        if not self.addressing.slots:
            sampled = [(n, u) for n, u in sampled if n not in self._busy]
        jobs = self.addressing.jobs(sampled, len(slots))
        if not jobs:
            return None
        content = self._content(arrays, instructions)

        def message(node: int, message_users: tuple[int, ...]) -> Message:
            return Message(self.addressing.content(content, message_users), dst_node_id=node,
                           message_type=MessageType.EVALUATE)

        answered, checked = 0, []
        for message_users, reply in self.channel.dispatch(jobs, slots, message, timeout_s=self.timeout_s):
            answered += 0 if reply.has_error() else len(message_users)
            checked += self.addressing.evaluation_scores(message_users, reply)
        return answered, [m for m in checked if m is not None]
