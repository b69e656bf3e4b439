"""Talking to the nodes through Flower's Grid: wait for them, send a round, collect replies within a timeout.

A message that times out still runs on its node. Sending that node another message while the first is in flight
would run two rounds on the same device state, so un-answered messages stay tracked (with a TTL longer than the
round timeout) and their nodes are skipped, counted as dropouts, until the late reply arrives or expires.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

POLL_S = 0.05
T = TypeVar("T")


def wait_for_nodes(grid: Grid, expected: int, *, timeout_s: float, settle_s: float = 2.0) -> list[int]:
    """Node ids once ``expected`` nodes are connected (or, with ``expected`` = 0, once the count settles)."""
    start, last, stable_since = time.monotonic(), -1, time.monotonic()
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) != last:
            last, stable_since = len(ids), time.monotonic()
        if (expected and len(ids) >= expected) or (not expected and ids and time.monotonic() - stable_since >= settle_s):
            return ids
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(
                f"only {len(ids)} of {expected or 'the'} nodes connected within {timeout_s:.0f} s; "
                "check that the SuperNodes are running and reach the SuperLink."
            )
        time.sleep(0.2)


class RoundChannel:
    """Sends one round's messages and collects replies, remembering messages still in flight."""

    def __init__(self, grid: Grid, *, ttl_s: float) -> None:
        self.grid = grid
        self.ttl_s = ttl_s
        self._in_flight: dict[str, tuple[int, float]] = {}  # message id -> (node id, expiry)

    def busy_nodes(self) -> set[int]:
        """Nodes still working on an earlier message (late replies are drained and discarded)."""
        if self._in_flight:
            for reply in self.grid.pull_messages(list(self._in_flight)):
                self._in_flight.pop(reply.metadata.reply_to_message_id, None)
            now = time.monotonic()
            for message_id in [m for m, (_, expiry) in self._in_flight.items() if expiry < now]:
                self._in_flight.pop(message_id)
        return {node for node, _ in self._in_flight.values()}

    def dispatch(
        self,
        jobs: Sequence[tuple[int | None, T]],
        slots: Sequence[int],
        build: Callable[[int, T], Message],
        *,
        timeout_s: float,
    ) -> Iterator[tuple[T, Message]]:
        """Send every job and yield (job, reply) as replies arrive, until all replied or ``timeout_s`` passed.

        A job is (node, payload): its own node, or None for "the next free slot". Slot jobs go out one per slot at
        a time, the next when a slot's reply arrives, so the SuperLink's queue (and the memory of messages waiting
        in it) stays at the size of the slot pool rather than the round. ``build(node, payload)`` makes the
        message. Jobs not yet sent when ``timeout_s`` passes are never sent; un-answered ones stay tracked.
        """
        if not jobs:
            return
        pending, free = list(reversed(jobs)), list(slots)
        waiting: dict[str, tuple[int, T]] = {}  # message id -> (node, job)
        deadline = time.monotonic() + timeout_s
        while (pending or waiting) and time.monotonic() < deadline:
            batch = []
            while pending and (pending[-1][0] is not None or free):
                node, job = pending.pop()
                batch.append((build(free.pop() if node is None else node, job), job))
            if not batch and not waiting:
                break  # slot jobs left but no slot free (all busy with an earlier round): they cannot run
            if batch:
                list(self.grid.push_messages([msg for msg, _ in batch]))  # sets each message's metadata.message_id
                waiting.update({msg.metadata.message_id: (msg.metadata.dst_node_id, job) for msg, job in batch})
            replies = list(self.grid.pull_messages(list(waiting)))
            for reply in replies:
                node, job = waiting.pop(reply.metadata.reply_to_message_id)
                if pending and pending[-1][0] is None:
                    free.append(node)
                yield job, reply
            if not replies and waiting:
                time.sleep(POLL_S)
        expiry = time.monotonic() - timeout_s + self.ttl_s
        self._in_flight.update({mid: (node, expiry) for mid, (node, _) in waiting.items()})


def warm_up(grid: Grid, node_ids: Sequence[int], count: int) -> None:
    """One untimed round trip to ``count`` nodes, so the simulation's worker start-up is not charged to round 1."""
    messages = [Message(RecordDict(), dst_node_id=node, message_type="query.ping") for node in node_ids[:count]]
    list(grid.send_and_receive(messages))
