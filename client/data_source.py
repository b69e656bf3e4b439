"""Where a node's training data comes from: the ClientApp's pluggable data source, and the device's own log.

A ``DataSource`` turns the round's ``DataInstructions`` and the node config into the node's ``DeviceData``. The
product ClientApp (``client.client_app.app``) uses ``device_data``: a SuperNode stands for one device, and its node
config (``flower-supernode --node-config``) names the device's behaviour log, ``log-db="/path/events.db"`` (a
``client.log_store.LogStore``); examples are cut from its events each round with the window and held-out fraction
the server sends. The simulation's ClientApp plugs in a source for Flower's ``partition-id`` (a synthetic user,
``simulations.federation.device_data``); the product never imports it, and refuses a ``partition-id`` node config.

The device's privacy ledger (``client.device_ledger``: what every run it joined may cost it) lives in the device's
storage: ``ledger-path`` when the node config gives one, else next to the log (``events.db`` ->
``events.ledger.json``). Its owner's privacy policy (``client.privacy_policy``) is the JSON file ``privacy-policy``
names, or the safe defaults.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from client.log_store import LogStore, LogStoreError
from client.privacy_policy import DevicePrivacyPolicy, load_policy
from model.features.examples import Examples, build_examples, split_recent
from protocol.instructions import DataInstructions
from protocol.node_config import LEDGER_PATH, LOG_DB, PARTITION_ID

logger = logging.getLogger(__name__)


class DeviceDataError(ValueError):
    """The node config does not say where this device's data is, or says it wrongly; names the key and value."""


@dataclass(frozen=True)
class DeviceData:
    """One device's examples for this round.

    Attributes:
        train: the prediction points it trains on (oldest first).
        held_out: its most recent prediction points, kept for its own evaluation.
        device_id: a stable integer that seeds the device's local randomness (a hash of the log's path, or the
            synthetic user id).
        ledger_path: where its record-level privacy ledger is kept; None keeps it in memory only.
        source: a human-readable description for error messages ("log /data/events.db", "synthetic user 3").
        synthetic: a simulation's synthetic user, which obeys ``privacy.noise=seeded`` (``client.local_update``); a
            device's own log never is.
        policy: what the device's owner accepts; None: no policy (a synthetic user, which has no owner).
    """

    train: Examples
    held_out: Examples
    device_id: int
    ledger_path: Path | None
    source: str
    synthetic: bool = False
    policy: DevicePrivacyPolicy | None = field(default_factory=DevicePrivacyPolicy)


DataSource = Callable[[DataInstructions, Mapping[str, object], str | None], DeviceData]
"""``(data instructions, node config, device_dir) -> DeviceData``: where a ClientApp's nodes get their examples.
``device_dir`` is where a simulated device keeps its ledger when the node config names none."""


def _stable_id(path: Path) -> int:
    return int.from_bytes(hashlib.sha256(str(path).encode()).digest()[:4], "big") & 0x7FFFFFFF


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


def ledger_path_of(node_config: Mapping[str, object]) -> Path | None:
    """The node config's ``ledger-path``, or None when it names none."""
    ledger = node_config.get(LEDGER_PATH)
    return Path(str(ledger)).expanduser() if ledger not in (None, "") else None


def device_data(data: DataInstructions, node_config: Mapping[str, object], device_dir: str | None = None) -> DeviceData:
    """This device's examples and ledger location, from the log store its node config names (``log-db``).

    The product ``DataSource``. ``device_dir`` is unused: a device keeps its ledger beside its log.

    Raises:
        DeviceDataError: if the node config names no ``log-db``, names a synthetic user (``partition-id``: the
            simulation's ClientApp plays those), or names a log that cannot be read.
        PrivacyConfigError: if the privacy policy file it names cannot be read or breaks a rule.
    """
    if PARTITION_ID in node_config:
        raise DeviceDataError(
            f"node config sets '{PARTITION_ID}' (a synthetic user of Flower's simulation), but this ClientApp trains "
            f"on a device's own log ({LOG_DB}=PATH). Simulations run the simulation's ClientApp "
            "(simulations.federation.simulation_client_app, started by python -m simulations.run)."
        )
    if node_config.get(LOG_DB) in (None, ""):
        raise DeviceDataError(
            f"node config names no data: start the SuperNode with --node-config '{LOG_DB}=\"/path/events.db\"' "
            f"(the device's log store). Found keys {sorted(node_config)}."
        )
    path = Path(str(node_config[LOG_DB])).expanduser().resolve()
    train, held_out = log_examples(path, data)
    ledger_path = ledger_path_of(node_config) or path.with_name(f"{path.stem}.ledger.json")
    return DeviceData(train, held_out, _stable_id(path), ledger_path, f"log {path}", policy=load_policy(node_config))
