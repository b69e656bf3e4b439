"""Everything needed to continue a run, written atomically after each round, read without executing anything.

A checkpoint holds the global weights, the last completed round, the privacy ledger, the calibrated noise
multiplier, the next round's clipping norm (adaptive clipping moves it), the run's key (devices count a run once
by it), the server strategy's state (e.g. FedAdam's
moments), where simulated devices keep their ledgers, and the metrics so far. It holds no random generator state: the noise of
every release comes from fresh OS entropy (``privacy.randomness``), so a resumed run draws anew.

It is written to a temporary file in the same directory and renamed over the old one, so a crash mid-write leaves
the previous checkpoint intact. It is read with ``torch.load(weights_only=True)``: only tensors and plain
containers load, so a tampered file cannot run code on the aggregation server (a full unpickler would run
whatever a pickled object names). Arrays are therefore stored as torch tensors.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storage.atomic import atomic_write

FORMAT_VERSION = 3
"""3: the clipping norm and the run's key, no record-level epsilons (devices keep them); 2 (refused): devices' reported record-level
epsilons; 1 (refused) pickled NumPy arrays and RNG states. All are weights-only (tensors, no pickled objects)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or was not written by this version; names the file."""


@dataclass
class Checkpoint:
    round: int
    arrays: dict[str, np.ndarray]
    ledger: dict
    noise_multiplier: float | None
    strategy_state: dict[str, Any] = field(default_factory=dict)
    device_dir: str | None = None  # where simulated devices keep their record-level ledgers
    clipping_norm: float | None = None  # the next round's user-level clipping norm
    run_key: str = ""  # the run's identity for the devices' ledgers
    rounds: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)


def _tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _arrays(tensors: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in tensors.items()}


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temp file + rename in the same directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION, **checkpoint.__dict__, "arrays": _tensors(checkpoint.arrays),
        "strategy_state": {name: _tensors(value) for name, value in checkpoint.strategy_state.items()},
    }
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint with the weights-only loader.

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        CheckpointError: if the file carries a pickled object (refused before anything in it runs), is not a
            checkpoint, or was written by another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={path}: no such file. Pass the checkpoint.pt written by an earlier run.")
    try:
        payload = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line] or [type(error).__name__]
        raise CheckpointError(
            f"checkpoint={path}: refused, nothing in it was run: it carries a pickled object that only a full "
            f"unpickler would build ({lines[0]}). A checkpoint of this version holds tensors and plain values only; "
            "this file was tampered with or written by an older version."
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"checkpoint={path}: not a checkpoint torch can read ({error}).") from None
    version = payload.pop("format_version", None) if isinstance(payload, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint={path}: format version {version!r} is not {FORMAT_VERSION}; it was not "
                              "written by this version.")
    try:
        checkpoint = Checkpoint(**payload)
    except TypeError as error:
        raise CheckpointError(f"checkpoint={path}: not this version's fields ({error}).") from None
    checkpoint.arrays = _arrays(checkpoint.arrays)  # type: ignore[arg-type]
    checkpoint.strategy_state = {name: _arrays(value) for name, value in checkpoint.strategy_state.items()}
    return checkpoint
