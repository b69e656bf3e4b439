"""The Flower ClientApp: one device training the preference LSTM on its private log.

It receives the global prior and this round's instructions in the message, trains locally (DP-SGD when
record-level privacy is on) and replies with model arrays and the declared scalar metrics only. Where its data
comes from is ``client.device_data``: the log store named by node config ``log-db`` on a device, synthetic user
``partition-id`` in simulation. Rounds run with secure aggregation arrive as SecAgg+ messages and go to
``client.secagg_client`` (same training, masked reply). A simulation slot may be asked to play several users in one
message; it trains them one after another from the same global prior and joins their replies (``client.records``).
In a simulation with ``simulation.attack``, a synthetic user
chosen as malicious replies with its attack (``client.attacks``); a device training on its own log never does.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.attacks import update_as_instructed
from client.device_data import device_data
from client.device_ledger import DeviceLedger
from client.instructions import TrainInstructions, from_config_items
from client.local_update import DECLINE_REASONS, local_evaluation
from client.node_config import PARTITION_ID
from client.records import from_array_record, joined_parts, slot_users, to_array_record
from client.secagg_client import secagg_app

logging.getLogger("flwr").propagate = False  # opacus calls logging.basicConfig(): without this flwr logs twice


def _not_a_shutdown_notice(record: logging.LogRecord) -> bool:
    """Flower's simulation actors log "Manually terminating ClientAppActor" at WARNING on every normal shutdown."""
    return not record.getMessage().startswith("Manually terminating")


logging.getLogger("flwr").addFilter(_not_a_shutdown_notice)  # this module is loaded in every simulation actor

app = ClientApp()


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


def _train_one(global_arrays: dict[str, np.ndarray], instructions: TrainInstructions, node_config: dict) -> RecordDict:
    data = device_data(instructions.data, node_config, instructions.device_dir)
    ledger = DeviceLedger(data.ledger_path)
    update = update_as_instructed(global_arrays, instructions, data.train, ledger, data.device_id,
                                  simulated=PARTITION_ID in node_config)  # a synthetic user may play an attack
    content = RecordDict({"metrics": MetricRecord(update.metrics)})
    if update.declined:
        content["status"] = ConfigRecord({"declined": DECLINE_REASONS[update.declined]})
    else:
        content["arrays"] = to_array_record(update.arrays)
    return content


@app.train()
def train(msg: Message, context: Context) -> Message:
    if RECORD_KEY_CONFIGS in msg.content.config_records:  # a stage of a SecAgg+ round (legacy message layout)
        return secagg_app(msg, context)
    instructions, global_arrays, users = _instructions(msg), _arrays(msg), slot_users(msg.content)
    return _reply(msg, users, [_train_one(global_arrays, instructions, config) for config in _node_configs(users, context)])


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    instructions, global_arrays, users = _instructions(msg), _arrays(msg), slot_users(msg.content)
    parts = []
    for config in _node_configs(users, context):
        data = device_data(instructions.data, config, instructions.device_dir)
        parts.append(RecordDict({"metrics": MetricRecord(local_evaluation(global_arrays, instructions.model, data.held_out, data.train))}))
    return _reply(msg, users, parts)


@app.query("ping")
def ping(msg: Message, context: Context) -> Message:
    """An empty round trip: lets the server wait for the simulation's workers before round 1's timer starts."""
    return Message(RecordDict(), reply_to=msg)
