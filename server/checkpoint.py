"""Everything needed to continue a run, written atomically after each round.

A checkpoint holds the global weights, the last completed round, the privacy ledger, the calibrated noise
multiplier, the server strategy's state (e.g. FedAdam's moments), the RNG states and the metrics so far. It is
written to a temporary file in the same directory and renamed over the old one, so a crash mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    ledger: dict
    noise_multiplier: float | None
    strategy_state: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """The states of Python's, NumPy's global and torch's RNGs (Flower samples with Python's ``random``)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temp file + rename in the same directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, **checkpoint.__dict__}
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; a missing or foreign file gives an error that says what to pass instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={path}: no such file. Pass the checkpoint.pt written by an earlier run.")
    payload = torch.load(path, weights_only=False)
    version = payload.pop("format_version", None) if isinstance(payload, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"checkpoint={path}: format version {version!r} is not {FORMAT_VERSION}; it was not written by this version.")
    return Checkpoint(**payload)
