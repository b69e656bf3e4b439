"""Where a node's training data comes from: the device's own SQLite log, or (in simulation) a synthetic user.

A SuperNode stands for one device. Its node config (``flower-supernode --node-config``) says where its data is:

- ``log-db="/path/events.db"``: the device's behaviour log, a ``client.log_store.LogStore``. Examples are cut from
  its events each round with the window and held-out fraction the server sends (``DataInstructions``).
- ``partition-id=N``: synthetic user N of the population the server describes (Flower's simulation sets this).

The device's record-level privacy ledger (its epsilon over every round it ever trained) lives in the device's
storage: ``ledger-path`` when the node config gives one, else next to the log (``events.db`` ->
``events.ledger.json``); a synthetic user keeps it in the run's ``device_dir`` as before.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from client.instructions import DataInstructions
from client.log_store import LogStore, LogStoreError
from client.node_config import LEDGER_PATH, LOG_DB, PARTITION_ID
from client.simulated_device import device_examples
from model.encoding import Examples, build_examples, split_recent

logger = logging.getLogger(__name__)


class DeviceDataError(ValueError):
    """The node config does not say where this device's data is, or says it wrongly; names the key and value."""


@dataclass(frozen=True)
class DeviceData:
    """One device's examples for this round.

    Attributes:
        train: the prediction points it trains on (oldest first).
        held_out: its most recent prediction points, kept for its own evaluation.
        device_id: a stable integer that seeds the device's local randomness (the synthetic user id, or a hash
            of the log's path).
        ledger_path: where its record-level privacy ledger is kept; None keeps it in memory only.
        source: a human-readable description for error messages ("log /data/events.db", "synthetic user 3").
    """

    train: Examples
    held_out: Examples
    device_id: int
    ledger_path: Path | None
    source: str


def _stable_id(path: Path) -> int:
    return int.from_bytes(hashlib.sha256(str(path).encode()).digest()[:4], "big") & 0x7FFFFFFF


def _partition_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DeviceDataError(f"node config '{PARTITION_ID}' must be a whole number; found {value!r}.")
    try:
        return int(value)
    except ValueError:
        raise DeviceDataError(f"node config '{PARTITION_ID}' must be a whole number; found {value!r}.") from None


def log_examples(path: Path, data: DataInstructions) -> tuple[Examples, Examples]:
    """(training, held-out) examples from the events of the log store at ``path``.

    Rows that no longer parse are skipped with a warning (training goes on with the readable events).

    Raises:
        DeviceDataError: if there is no log store at ``path`` or the file is not one.
    """
    try:
        with LogStore.open(path, create=False) as store:
            report = store.read()
    except LogStoreError as error:
        raise DeviceDataError(f"node config '{LOG_DB}' = {str(path)!r}: {error}") from None
    if report.errors:
        logger.warning("%s: skipped %d unreadable rows (first: %s)", path, len(report.errors), report.errors[0])
    return split_recent(build_examples(report.events, data.window), data.eval_fraction)


def device_data(data: DataInstructions, node_config: Mapping[str, object], device_dir: str | None = None) -> DeviceData:
    """This node's examples and ledger location, from its node config (see the module docstring).

    Args:
        data: how examples are cut (window, held-out fraction) and, for synthetic users, the population.
        node_config: the SuperNode's ``--node-config`` (``context.node_config``).
        device_dir: where a simulated device keeps its ledger when the node config names none.

    Raises:
        DeviceDataError: if the node config names neither ``log-db`` nor ``partition-id``, names both, or names
            a log that cannot be read.
    """
    ledger = node_config.get(LEDGER_PATH)
    ledger_path = Path(str(ledger)).expanduser() if ledger not in (None, "") else None
    has_log, has_partition = node_config.get(LOG_DB) not in (None, ""), PARTITION_ID in node_config
    if has_log and has_partition:
        raise DeviceDataError(
            f"node config sets both '{LOG_DB}' and '{PARTITION_ID}'; a device trains on one source: its log "
            f"({LOG_DB}=PATH) on a real device, a synthetic user ({PARTITION_ID}=N) in simulation."
        )
    if has_log:
        path = Path(str(node_config[LOG_DB])).expanduser().resolve()
        train, held_out = log_examples(path, data)
        if ledger_path is None:
            ledger_path = path.with_name(f"{path.stem}.ledger.json")
        return DeviceData(train, held_out, _stable_id(path), ledger_path, f"log {path}")
    if has_partition:
        user_id = _partition_id(node_config[PARTITION_ID])
        train, held_out = device_examples(data, user_id)
        if ledger_path is None and device_dir is not None:
            ledger_path = Path(device_dir) / f"user-{user_id}.ledger.json"
        return DeviceData(train, held_out, user_id, ledger_path, f"synthetic user {user_id}")
    raise DeviceDataError(
        f"node config names no data: start the SuperNode with --node-config '{LOG_DB}=\"/path/events.db\"' "
        f"(the device's log store) or, for a synthetic user, '{PARTITION_ID}=N'. Found keys {sorted(node_config)}."
    )
