"""The Flower ClientApp: one device training the preference LSTM on its private log.

It receives the global prior and this round's instructions in the message, trains locally (DP-SGD when
record-level privacy is on) and replies with model arrays and the declared scalar metrics only. In simulation its
log is synthetic user ``partition-id``; on a device the node config names its log (see README).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.device_ledger import DeviceLedger
from client.instructions import TrainInstructions, from_config_items
from client.local_update import DECLINE_REASONS, local_evaluation, local_update
from client.records import from_array_record, to_array_record
from client.simulated_device import device_examples
from model.encoding import Examples

logging.getLogger("flwr").propagate = False  # opacus calls logging.basicConfig(): without this flwr logs twice

app = ClientApp()


def _instructions(msg: Message) -> TrainInstructions:
    return from_config_items(dict(msg.content["config"]))


def _arrays(msg: Message) -> dict[str, np.ndarray]:
    return from_array_record(msg.content["arrays"])


def _user_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise ValueError("node config has no 'partition-id': start simulated nodes with --node-config \"partition-id=N\".")
    return int(context.node_config["partition-id"])


def _device_data(instructions: TrainInstructions, context: Context) -> tuple[Examples, Examples, int]:
    user_id = _user_id(context)
    train, held_out = device_examples(instructions.data, user_id)
    return train, held_out, user_id


def _ledger_path(instructions: TrainInstructions, user_id: int) -> Path | None:
    if instructions.device_dir is None:
        return None
    return Path(instructions.device_dir) / f"user-{user_id}.ledger.json"


@app.train()
def train(msg: Message, context: Context) -> Message:
    instructions = _instructions(msg)
    examples, _, user_id = _device_data(instructions, context)
    ledger = DeviceLedger(_ledger_path(instructions, user_id))
    update = local_update(_arrays(msg), instructions, examples, ledger, user_id)
    content = RecordDict({"metrics": MetricRecord(update.metrics)})
    if update.declined:
        content["status"] = ConfigRecord({"declined": DECLINE_REASONS[update.declined]})
    else:
        content["arrays"] = to_array_record(update.arrays)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    instructions = _instructions(msg)
    _, held_out, _ = _device_data(instructions, context)
    metrics = local_evaluation(_arrays(msg), instructions.model, held_out)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query("ping")
def ping(msg: Message, context: Context) -> Message:
    """An empty round trip: lets the server wait for the simulation's workers before round 1's timer starts."""
    return Message(RecordDict(), reply_to=msg)
