"""The Flower ClientApp: one device training the preference LSTM on its private log.

It receives the global prior and this round's instructions in the message, trains locally (DP-SGD when
record-level privacy is on) and replies with its bounded contribution only (``protocol.reply_layout``: the update
and three bounded statistics; evaluation: five bounded scores). Rounds run with secure aggregation arrive as SecAgg+
messages and go to ``client.secagg_client`` (same training, masked reply). A simulation slot may be asked to play
several users in one message; it trains them together from the same global prior (one batched computation where
the model allows, ``model.network.batched_training``) and joins their replies (``protocol.records``).

Whatever goes wrong, the reply is an error with a fixed reason code (``protocol.reply_layout.REASON_CODES``): the
exception, its text and the traceback stay in the device's own log. Flower would otherwise send the exception's
text, which can name the log's path or a value from it.

Where the data comes from is pluggable (``client.data_source.DataSource``): ``make_client_app(source, mods=...)`` builds
the app around any source. ``app``, the product ClientApp that ``flwr run`` and every SuperNode run (pyproject.toml),
reads the log store named by node config ``log-db``, and keeps each global prior it receives in the device's storage for
the device's own app (``client.received_prior``), after its reply is built and without ever changing it. The simulation
builds its own from these same functions (``simulations.federation.simulation_client_app``: synthetic user
``partition-id``, and its attacks as a client mod).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.data_source import DataSource, DeviceDataError, device_data
from client.device_ledger import DeviceLedger
from client.local_update import local_evaluation, local_updates
from client.privacy_policy import PolicyRefusal
from client.received_prior import PriorKeeper, keep_quietly, keep_received_prior
from client.secagg_client import NotCheckedIn, secagg_app
from privacy.errors import PrivacyConfigError
from protocol.instructions import InstructionError, TrainInstructions, from_config_items
from protocol.node_config import PARTITION_ID
from protocol.records import from_array_record, joined_parts, slot_users, to_array_record
from protocol.reply_layout import CHECK_IN, CHECK_IN_QUERY, CONTRIBUTION, EVALUATION, JOINED, SCORES_ARRAY, STATISTICS_ARRAY

logger = logging.getLogger(__name__)

logging.getLogger("flwr").propagate = False  # opacus calls logging.basicConfig(): without this flwr logs twice


def _not_a_shutdown_notice(record: logging.LogRecord) -> bool:
    """Flower's simulation actors log "Manually terminating ClientAppActor" at WARNING on every normal shutdown."""
    return not record.getMessage().startswith("Manually terminating")


logging.getLogger("flwr").addFilter(_not_a_shutdown_notice)  # this module is loaded in every simulation actor


def _instructions(msg: Message) -> TrainInstructions:
    return from_config_items(dict(msg.content["config"]))


def _arrays(msg: Message) -> dict[str, np.ndarray]:
    return from_array_record(msg.content["arrays"])


def _node_configs(users: list[int] | None, context: Context) -> list[dict]:
    """One node config per user a message is for: the node's own (``users`` None), or each user a slot plays."""
    if users is None:
        return [dict(context.node_config)]
    return [{**context.node_config, PARTITION_ID: user} for user in users]


def _reply(msg: Message, users: list[int] | None, parts: list[RecordDict]) -> Message:
    """A device's reply is its one user's records; a slot joins its users' under their positions."""
    return Message(parts[0] if users is None else joined_parts(parts), reply_to=msg)


def _train_all(source: DataSource, global_arrays: dict[str, np.ndarray], instructions: TrainInstructions,
               node_configs: list[dict]) -> list[RecordDict]:
    """Each user's reply records; a slot's users are trained together (``client.local_update.local_updates``)."""
    data = [source(instructions.data, config, instructions.device_dir) for config in node_configs]
    updates = local_updates(global_arrays, instructions, [d.train for d in data], [DeviceLedger(d.ledger_path) for d in data],
                            [d.device_id for d in data], simulated=data[0].synthetic, policies=[d.policy for d in data])
    return [RecordDict({CONTRIBUTION: to_array_record({**u.update, STATISTICS_ARRAY: u.statistics})}) for u in updates]


def reason_code(error: Exception) -> str:
    """The reason code an error reply carries for ``error`` (``protocol.reply_layout.REASON_CODES``)."""
    if isinstance(error, (PolicyRefusal, NotCheckedIn)):
        return error.code
    if isinstance(error, PrivacyConfigError):
        return "device-policy"
    if isinstance(error, DeviceDataError):
        return "device-data"
    if isinstance(error, (InstructionError, KeyError, ValueError)):
        return "bad-instructions"
    return "internal"


def refusing_with_codes(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """``handler``, but any exception becomes an error reply carrying only its reason code; the exception and its
    traceback go to this device's log."""

    @functools.wraps(handler)
    def guarded(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as error:  # noqa: BLE001 - every failure must become a reason code, never text
            code = reason_code(error)
            logger.error("replying with error code %r", code, exc_info=error)
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=code), reply_to=msg)

    return guarded


def make_client_app(source: DataSource, *, mods: Sequence[Mod] = (), keep_prior: PriorKeeper | None = None
                    ) -> ClientApp:
    """The ClientApp whose nodes get their examples from ``source``, with Flower client ``mods`` around it.

    ``keep_prior``: called with each global prior a device (not a simulation slot) received, once the reply to its
    message is built; a failure is logged on the device and changes nothing else (``client.received_prior``).
    """
    app = ClientApp(mods=list(mods))
    secure = secagg_app(source)

    def keep(kind: str, context: Context, users: list[int] | None, arrays: dict[str, np.ndarray],
             instructions: TrainInstructions) -> None:
        if keep_prior is not None and users is None:
            keep_quietly(keep_prior, arrays, instructions, context.node_config, kind)

    @app.train()
    @refusing_with_codes
    def train(msg: Message, context: Context) -> Message:
        if RECORD_KEY_CONFIGS in msg.content.config_records:  # a stage of a SecAgg+ round (legacy message layout)
            return secure(msg, context)
        instructions, global_arrays, users = _instructions(msg), _arrays(msg), slot_users(msg.content)
        reply = _reply(msg, users, _train_all(source, global_arrays, instructions, _node_configs(users, context)))
        keep("train", context, users, global_arrays, instructions)
        return reply

    @app.evaluate()
    @refusing_with_codes
    def evaluate(msg: Message, context: Context) -> Message:
        instructions, global_arrays, users = _instructions(msg), _arrays(msg), slot_users(msg.content)
        parts = []
        for config in _node_configs(users, context):
            data = source(instructions.data, config, instructions.device_dir)
            if data.policy is not None:  # scores are a release too: the same floor holds
                refusal = data.policy.refusal(instructions, DeviceLedger(data.ledger_path), training=False)
                if refusal is not None:
                    raise refusal
            scores = local_evaluation(global_arrays, instructions.model, data.held_out, data.train)
            parts.append(RecordDict({EVALUATION: to_array_record({SCORES_ARRAY: scores})}))
        reply = _reply(msg, users, parts)
        keep("evaluate", context, users, global_arrays, instructions)
        return reply

    @app.query(CHECK_IN_QUERY)
    @refusing_with_codes
    def check_in(msg: Message, context: Context) -> Message:
        """``privacy=distributed``: whether this device joins the round, by its own OS-entropy coin with the announced
        probability (``client.device_ledger.DeviceLedger.check_in``; its policy may keep it out first)."""
        instructions = _instructions(msg)
        if instructions.user_level is None or instructions.distributed is None:
            raise InstructionError("a check-in needs the run's announced user-level mechanism and its share parameters")
        data = source(instructions.data, context.node_config, instructions.device_dir)
        ledger = DeviceLedger(data.ledger_path)
        joined = False
        if data.policy is not None and (data.policy.refusal(instructions, ledger) is not None
                                        or data.policy.sits_out(instructions, ledger, time.time()) is not None):
            logger.info("sitting out round %s by this device's policy", instructions.round)
        else:
            joined = ledger.check_in(instructions.run_key, instructions.round, instructions.user_level.sample_rate)
            ledger.save()
        return Message(RecordDict({CHECK_IN: ConfigRecord({JOINED: joined})}), reply_to=msg)

    @app.query("ping")
    def ping(msg: Message, context: Context) -> Message:
        """An empty round trip: lets the server wait for the simulation's workers before round 1's timer starts."""
        return Message(RecordDict(), reply_to=msg)

    return app


app = make_client_app(device_data, keep_prior=keep_received_prior)
"""The product ClientApp: a device training on its own log store (node config ``log-db``), keeping each prior."""
