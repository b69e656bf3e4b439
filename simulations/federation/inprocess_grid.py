"""A Flower Grid whose nodes run the ClientApp in this process, one synthetic user per node.

``server.federation.FederatedRun`` drives it exactly as it drives Flower's simulation engine: the same sampling,
Flower ``Message``s both ways, reply checks (``server.replies``), aggregation, privacy ledger and held-out scoring,
only without Ray's worker processes. For benchmarks that train many small federations in one process. Outside a
running Flower app, Messages need a task identity: use it inside
``simulations.federation.inprocess.server_task_identity()``.

Node ``i`` (1-based) plays synthetic user ``i - 1`` (node config ``partition-id``), as Flower's simulation assigns
partition ids. A ClientApp that raises becomes an error reply, as in Flower's simulation (the server counts it
as failed).
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from protocol.node_config import PARTITION_ID


class InProcessGrid:
    """The part of ``flwr.serverapp.Grid`` the server uses, delivering each message to ``client_app`` at once."""

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1. Found {num_nodes}.")
        self.client_app = client_app
        self.num_nodes = num_nodes
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.num_nodes + 1))

    def _deliver(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        context = Context(run_id=0, node_id=node, node_config={PARTITION_ID: node - 1}, state=RecordDict(),
                          run_config={})
        try:
            return self.client_app(message, context)
        except Exception as error:  # noqa: BLE001 - Flower's simulation turns a raising ClientApp into an error reply
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=repr(error)), reply_to=message)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Run every message's ClientApp now; the replies wait for ``pull_messages``."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's InMemoryGrid does
            self._replies[message.metadata.message_id] = self._deliver(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))
