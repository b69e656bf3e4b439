"""One user's streaming state and its small file next to the user's log.

The state is what the causal LSTM needs to read the *next* event without re-reading the history: the hidden and
cell tensors, the logits after the last event, how many events went in, the time of the last one (the next event's
time-gap feature is measured from it), the decayed counts of the genres kept so far (the next row's ``RECENT``), the
feature rows of the last ``window`` events (a predictor that reads windows, as the model was trained) and the
fingerprint of the weights that produced it. A state made by other weights is meaningless, so the fingerprint
decides whether a cached state may be continued.

The file is a fixed binary layout (a header, then float32 tensors; no pickle, so loading runs no code), 392 bytes
for the default device model, written to a temporary file and renamed over the old one, so a crash leaves the previous state,
never half of one. It is small enough to rewrite after every event (one write and one rename; see
``benchmarks/device_inference.py`` for what that costs).
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from storage.atomic import atomic_write_bytes

STATE_SUFFIX = ".stream"
MAGIC = b"FPSS"
FORMAT_VERSION = 3
_HEADER = struct.Struct("<4sIqd64sIIIIII")
"""magic, version, events consumed, last ts (NaN: none), fingerprint (64 hex), h/c shape, number of logits (and of
recent-genre counts), the window's rows and their width."""
OLDER_VERSIONS = (2,)
"""Formats of earlier versions: such a file is a stale cache (``load_state`` returns None and the log rebuilds it)."""
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class StaleStateError(RuntimeError):
    """A cached state was made by other model weights and no log was given to rebuild it from."""


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's architecture and weights: equal fingerprints mean equal predictions.

    Hashes every ``state_dict`` entry (name, dtype, shape, bytes) in order, plus ``model.config`` when present.
    """
    digest = hashlib.sha256(repr(getattr(model, "config", type(model).__name__)).encode())
    for name, tensor in model.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        if value.dtype == torch.bfloat16:
            value = value.view(torch.int16)  # NumPy has no bfloat16: hash the raw bits
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def check_user_id(user_id: str | int) -> str:
    """The user id as a file-name-safe string.

    Raises:
        ValueError: the id is not 1-128 letters, digits, ``_``, ``.`` or ``-`` starting with a letter or digit
            (so it can never name a file outside the cache directory).
    """
    text = str(user_id)
    if isinstance(user_id, bool) or not _USER_ID.fullmatch(text):
        raise ValueError(
            "user_id must be 1-128 characters of letters, digits, '_', '.' or '-', starting with a letter or digit."
            f" Found {user_id!r}."
        )
    return text


@dataclass(frozen=True)
class UserStreamState:
    """Where one user's stream stands.

    Attributes:
        h: hidden state ``[num_layers, 1, hidden_size]``.
        c: cell state, same shape.
        logits: the model's logits ``[8]`` after the last event (zeros before any event).
        fingerprint: ``model_fingerprint`` of the weights that produced ``h`` and ``c``.
        events_consumed: number of events read so far.
        last_ts: UTC seconds of the last event read, ``None`` before the first.
        recent: ``model.features.encoding.RECENT`` counts after the last event read ``[8]``.
        rows: the feature rows of the last events read ``[k, FEATURE_DIM]`` (k at most the predictor's window;
            0 rows for a predictor of the whole history).
    """

    h: torch.Tensor
    c: torch.Tensor
    logits: torch.Tensor
    fingerprint: str
    events_consumed: int
    last_ts: float | None
    recent: torch.Tensor
    rows: torch.Tensor


def state_path(cache_dir: Path, user_id: str | int) -> Path:
    """The state file of ``user_id`` in ``cache_dir``."""
    return cache_dir / f"{check_user_id(user_id)}{STATE_SUFFIX}"


def save_state(path: Path, state: UserStreamState) -> None:
    """Write ``state`` to ``path`` atomically, readable by its owner only (a state reflects private behaviour)."""
    layers, batch, hidden = state.h.shape
    rows, width = state.rows.shape
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, state.events_consumed,
                          math.nan if state.last_ts is None else state.last_ts,
                          state.fingerprint.encode("ascii"), layers, batch, hidden, state.logits.numel(), rows, width)
    body = b"".join(t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
                    for t in (state.h, state.c, state.logits, state.recent, state.rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, header + body)


def load_state(path: Path) -> UserStreamState | None:
    """The state saved at ``path``, or ``None`` when there is no file or it is an earlier version's (a cache of the
    log: rebuilt from it).

    Raises:
        ValueError: the file is not a complete state file of this format version.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER.size:
        raise ValueError(f"stream state file must hold at least a {_HEADER.size}-byte header. Found {len(data)} "
                         f"bytes in {path}.")
    magic, version = data[:4], struct.unpack_from("<I", data, 4)[0]
    if magic == MAGIC and version in OLDER_VERSIONS:
        return None
    if magic != MAGIC or version != FORMAT_VERSION:
        raise ValueError(f"stream state file must start with {MAGIC!r} version {FORMAT_VERSION}. Found {magic!r} "
                         f"version {version} in {path}.")
    _, _, consumed, last_ts, fingerprint, layers, batch, hidden, classes, rows, width = _HEADER.unpack_from(data)
    sizes = (layers * batch * hidden, layers * batch * hidden, classes, classes, rows * width)
    expected = _HEADER.size + 4 * sum(sizes)
    if len(data) != expected:
        raise ValueError(f"stream state file must be {expected} bytes for its shapes. Found {len(data)} in {path}.")
    values = np.frombuffer(data, dtype="<f4", offset=_HEADER.size).astype(np.float32)
    h, c, logits, recent, window = np.split(values, np.cumsum(sizes)[:-1])
    shape = (layers, batch, hidden)
    return UserStreamState(
        h=torch.from_numpy(h.reshape(shape).copy()),
        c=torch.from_numpy(c.reshape(shape).copy()),
        logits=torch.from_numpy(logits.copy()),
        fingerprint=fingerprint.decode("ascii"),
        events_consumed=consumed,
        last_ts=None if math.isnan(last_ts) else last_ts,
        recent=torch.from_numpy(recent.copy()),
        rows=torch.from_numpy(window.reshape(rows, width).copy()),
    )
