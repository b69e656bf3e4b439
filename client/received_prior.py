"""The product ClientApp's one write besides the ledger: keep each global prior the device receives, for its app.

The global prior arrives with every train and evaluate message. A device keeps the latest in its own storage
(``model.device.prior_store``: checked, written atomically, exported to ONNX), where the device room reads it to
personalise generation. Keeping is a side effect that must never touch the reply: the ClientApp calls
``keep_quietly`` only after its reply is built, and any failure is written to the device's own log and swallowed.
Nothing here sends anything.

The storage folder is node config ``device-storage``, or ``<log stem>.device/`` next to the log store (as the
ledger sits next to it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from protocol.instructions import TrainInstructions
from protocol.node_config import DEVICE_STORAGE, LOG_DB

logger = logging.getLogger(__name__)

PRIOR_FOLDER = "prior"
"""The priors' sub-folder of the device's storage (``model.device.prior_store.PriorStore``)."""

PriorKeeper = Callable[[dict[str, np.ndarray], TrainInstructions, Mapping[str, object], str], None]
"""``(global arrays, instructions, node config, "train" | "evaluate") -> None``: what a ClientApp does with a prior."""


def default_storage(log_db: str | Path) -> Path:
    """The device's storage folder when none is named: ``events.db`` -> ``events.device/`` beside it."""
    path = Path(log_db).expanduser().resolve()
    return path.with_name(f"{path.stem}.device")


def device_storage_of(node_config: Mapping[str, object]) -> Path:
    """The device's storage folder from its node config (``device-storage``, else beside ``log-db``).

    Raises:
        ValueError: the node config names neither.
    """
    named = node_config.get(DEVICE_STORAGE)
    if named not in (None, ""):
        return Path(str(named)).expanduser().resolve()
    if node_config.get(LOG_DB) in (None, ""):
        raise ValueError(f"node config names neither '{DEVICE_STORAGE}' nor '{LOG_DB}': no storage for the prior.")
    return default_storage(str(node_config[LOG_DB]))


def keep_received_prior(arrays: dict[str, np.ndarray], instructions: TrainInstructions,
                        node_config: Mapping[str, object], message: str) -> None:
    """Install the prior in the device's storage (``PriorStore.install``; raises its refusals)."""
    from model.device.prior_store import PriorStore  # onnx and onnxruntime: only a device that keeps priors loads them

    kept = PriorStore(device_storage_of(node_config) / PRIOR_FOLDER).install(
        arrays, instructions.model, run_key=instructions.run_key, round_number=instructions.round, message=message)
    logger.info("kept the global prior of run %r, version %d", kept.info.run_key, kept.info.version)


def keep_quietly(keep: PriorKeeper, arrays: dict[str, np.ndarray], instructions: TrainInstructions,
                 node_config: Mapping[str, object], message: str) -> None:
    """``keep(...)``, but a failure is only written to this device's log: it never reaches the reply."""
    try:
        keep(arrays, instructions, node_config, message)
    except Exception as error:  # noqa: BLE001 - keeping the prior is best effort; the round's reply is already built
        logger.warning("did not keep the received prior: %s", error)
