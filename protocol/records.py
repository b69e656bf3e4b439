"""How model arrays and a node slot's several users travel in Flower messages (used by client and server alike).

A simulation slot may play several sampled users per message (``simulation.users_per_message``): the message names
them in its ``user`` record (``user-ids``), and the reply holds each user's records under its position in that list,
``contribution.0``, ``contribution.1``, ... (or ``evaluation.0``, ...) ``user_parts`` cuts such a reply back into one
record dict per user, laid out as a device's own reply, so each user's update is checked on its own.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from protocol.reply_layout import CONTRIBUTION, EVALUATION

USERS_RECORD = "user"
"""The config record naming the users a simulation slot plays, under ``USER_IDS``."""
USER_IDS = "user-ids"
USER_RECORD_NAMES = (CONTRIBUTION, EVALUATION)
"""The records one user's reply may hold (``protocol.reply_layout``)."""


ARRAY_NAMES_KEY = "secagg.array-names"
"""SecAgg+ FitIns config key: the comma-separated names of the arrays, in the order of the legacy Parameters list."""


def to_array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """``arrays`` as Flower ``Array``s, each holding the bytes ``Array(value)`` would hold (what ``np.save`` writes)."""
    return ArrayRecord({name: _saved_array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def _saved_array(value: np.ndarray) -> Array:
    """``Array(value)`` with the ``.npy`` header taken from ``_npy_header``'s cache: writing the header is most of
    ``np.save``'s time for a small model's arrays (a slot replies with dozens of users' updates). Dtypes with fields
    or objects, or not in native byte order, go through ``Array`` itself."""
    dtype = value.dtype
    if dtype.fields is not None or dtype.hasobject or not dtype.isnative:
        return Array(value)
    return Array(dtype=str(dtype), shape=value.shape, stype="numpy.ndarray",
                 data=_npy_header(dtype.str, value.shape) + value.tobytes())


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


@lru_cache(maxsize=64)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The bytes ``np.save`` writes before the data of a C-ordered array of ``dtype`` and ``shape`` (dtype and shape
    of a trusted array only, a reference or one's own: this saves one such array of zeros)."""
    buffer = io.BytesIO()
    value = np.zeros(shape, dtype=dtype)
    np.save(buffer, value, allow_pickle=False)
    return buffer.getvalue()[: len(buffer.getvalue()) - value.nbytes]


def array_like(array: Array, reference: np.ndarray) -> np.ndarray:
    """``array.numpy()``, about 20 times faster when ``array`` holds exactly what ``np.save`` writes for an array of
    ``reference``'s dtype and shape (its header bytes compared, not parsed again). Anything else, hostile bytes
    included, goes through ``Array.numpy``, which raises or returns whatever the bytes hold."""
    header = _npy_header(reference.dtype.str, reference.shape)
    data = array.data
    if (array.stype == "numpy.ndarray" and len(data) == len(header) + reference.nbytes and data.startswith(header)):
        return np.frombuffer(data, dtype=reference.dtype, offset=len(header)).reshape(reference.shape).copy()
    return array.numpy()


def users_record(users: Sequence[int]) -> ConfigRecord:
    return ConfigRecord({USER_IDS: [int(u) for u in users]})


def slot_users(content: RecordDict) -> list[int] | None:
    """The users a slot message asks to play, or None for a message to a device (it trains on its own data).

    Raises:
        ValueError: if the record is there but does not hold a non-empty list of whole numbers.
    """
    if USERS_RECORD not in content.config_records:
        return None
    users = content.config_records[USERS_RECORD].get(USER_IDS)
    if not isinstance(users, list) or not users or not all(isinstance(u, int) and not isinstance(u, bool) for u in users):
        raise ValueError(f"the '{USERS_RECORD}' record must hold '{USER_IDS}', a non-empty list of whole numbers; found {users!r}.")
    return users


def joined_parts(parts: Sequence[RecordDict]) -> RecordDict:
    """One reply holding each user's records under its position: ``contribution.0``, ``contribution.1``, ..."""
    return RecordDict({f"{name}.{i}": record for i, part in enumerate(parts) for name, record in part.items()})


def user_parts(content: RecordDict, count: int) -> list[RecordDict]:
    """Each of ``count`` users' records from a joined reply, under their plain names (absent ones stay absent)."""
    return [
        RecordDict({name: content[f"{name}.{i}"] for name in USER_RECORD_NAMES if f"{name}.{i}" in content})
        for i in range(count)
    ]
