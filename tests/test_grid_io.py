"""RoundChannel over a grid stand-in: slots take jobs in turn, one message each in flight; timeouts are tracked.

The messages are real Flower ``Message`` objects; only the transport is a small in-process grid whose nodes answer
a message a given number of polls after it was pushed (or never), so ordering and timeouts can be checked exactly.
The real transport is exercised by the Ray runs in ``test_federated_run.py`` and ``test_engine_equivalence.py``.
"""

import itertools

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from server.grid_io import RoundChannel


class PollingGrid:
    """Nodes that reply ``delay[node]`` polls after a message was pushed (None: never)."""

    def __init__(self, delay: dict[int, int | None]) -> None:
        self.delay = delay
        self.pending: dict[str, tuple[Message, int]] = {}  # id -> (message, polls left)
        self.ids = itertools.count()
        self.max_in_flight: dict[int, int] = {}

    def push_messages(self, messages):
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{next(self.ids)}"
            self.pending[msg.metadata.message_id] = (msg, self.delay[msg.metadata.dst_node_id])
            node = msg.metadata.dst_node_id
            in_flight = sum(1 for m, _ in self.pending.values() if m.metadata.dst_node_id == node)
            self.max_in_flight[node] = max(self.max_in_flight.get(node, 0), in_flight)
            yield msg.metadata.message_id

    def pull_messages(self, message_ids):
        replies = []
        for mid in list(message_ids):
            if mid not in self.pending:
                continue
            msg, left = self.pending[mid]
            if left is None:
                continue
            if left == 0:
                del self.pending[mid]
                replies.append(Message(RecordDict({"echo": ConfigRecord({"job": msg.content["job"]["id"]})}), reply_to=msg))
            else:
                self.pending[mid] = (msg, left - 1)
        return replies


def _build(node: int, job: int) -> Message:
    return Message(RecordDict({"job": ConfigRecord({"id": job})}), dst_node_id=node, message_type="train")


def test_slots_take_every_job_in_turn_one_message_each_in_flight(flower_task_identity):
    grid = PollingGrid({1: 0, 2: 2, 3: 1})
    channel = RoundChannel(grid, ttl_s=60)
    results = list(channel.dispatch([(None, j) for j in range(20)], [1, 2, 3], _build, timeout_s=30))
    assert sorted(job for job, _ in results) == list(range(20))
    assert all(reply.content["echo"]["job"] == job for job, reply in results)  # each reply paired with its job
    assert grid.max_in_flight == {1: 1, 2: 1, 3: 1}
    assert channel.busy_nodes() == set()


def test_a_silent_slot_keeps_its_job_in_flight_and_the_others_finish_the_round(flower_task_identity):
    grid = PollingGrid({1: 0, 2: None})
    channel = RoundChannel(grid, ttl_s=60)
    results = list(channel.dispatch([(None, j) for j in range(6)], [1, 2], _build, timeout_s=0.5))
    assert len(results) == 5 and grid.max_in_flight[2] == 1  # node 2 got one job and never answered
    assert channel.busy_nodes() == {2}  # tracked: it is not sent another message while that one may still run


def test_no_free_slot_returns_at_once_instead_of_waiting_for_the_timeout(flower_task_identity):
    channel = RoundChannel(PollingGrid({}), ttl_s=60)
    assert list(channel.dispatch([(None, 1), (None, 2)], [], _build, timeout_s=3600)) == []


def test_a_job_with_its_own_node_goes_to_that_node(flower_task_identity):
    grid = PollingGrid({5: 1, 6: 0})
    channel = RoundChannel(grid, ttl_s=60)
    replies = [reply for _, reply in channel.dispatch([(5, 50), (6, 60)], [], _build, timeout_s=30)]
    assert sorted((r.metadata.src_node_id, r.content["echo"]["job"]) for r in replies) == [(5, 50), (6, 60)]


@pytest.mark.parametrize("count", [0, 1])
def test_empty_and_single_rounds(flower_task_identity, count):
    channel = RoundChannel(PollingGrid({1: 0}), ttl_s=60)
    assert len(list(channel.dispatch([(None, j) for j in range(count)], [1], _build, timeout_s=5))) == count


def test_a_superlink_error_reply_is_paired_with_the_job_whose_message_it_answers(flower_task_identity):
    """The SuperLink answers for an unavailable node with an error from itself (not from the node): the job, and
    so the user or node the server blames, comes from the message the error replies to."""
    from flwr.app import Error
    from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

    class NodeSevenUnavailable(PollingGrid):
        def pull_messages(self, message_ids):
            replies = super().pull_messages([m for m in message_ids if self.pending[m][0].metadata.dst_node_id != 7])
            for mid in [m for m in message_ids if m in self.pending and self.pending[m][0].metadata.dst_node_id == 7]:
                msg, _ = self.pending.pop(mid)
                reply = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node unavailable"), reply_to=msg)
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID  # the SuperLink, not node 7, replies
                replies.append(reply)
            return replies

    channel = RoundChannel(NodeSevenUnavailable({7: 0, 8: 0}), ttl_s=60)
    results = dict(channel.dispatch([(7, "user-a"), (8, "user-b")], [], _build_named, timeout_s=30))
    assert results["user-a"].has_error() and results["user-a"].error.reason == "node unavailable"
    assert not results["user-b"].has_error() and results["user-b"].content["echo"]["job"] == "user-b"


def _build_named(node: int, job: str) -> Message:
    return Message(RecordDict({"job": ConfigRecord({"id": job})}), dst_node_id=node, message_type="train")
