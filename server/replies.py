"""Judging each reply of a round: a contribution to fold in, an error, or a malformed reply rejected and counted.

A train reply must hold exactly the one record ``protocol.reply_layout`` declares: the ``contribution`` ArrayRecord
with the global model's arrays (same names and shapes, a floating-point dtype, bytes that decode to them) and the
bounded statistics' array. Values are cast to the global model's dtype (float32) *before* they are checked finite:
a float64 1e300 passes a finite check and becomes Inf in the model's precision. The mechanism then bounds what
passes (clips the update, clamps the statistics), so no value a device sends is trusted for the privacy bound. An
evaluate reply must hold exactly the ``evaluation`` record's scores. A hostile client controls every byte of its
reply; nothing in it may raise here.

A simulation slot's reply joins several users' records (``protocol.records``); each user's part is judged on its own,
exactly as a device's reply would be, so one malformed user costs only its own update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.common.constant import ErrorCode

from privacy.contribution import STATISTICS
from protocol.records import array_like, user_parts
from protocol.reply_layout import CONTRIBUTION, EVAL_SCORES, EVALUATION, REASON_CODES, SCORES_ARRAY, STATISTICS_ARRAY

Arrays = dict[str, np.ndarray]
MODEL_DTYPE = np.float32
"""The global model's precision: every value of a reply is checked in it."""


@dataclass(frozen=True)
class Contribution:
    """One device's judged contribution: its update (float32, finite) and its statistics' coordinates."""

    owner: int
    update: Arrays
    statistics: np.ndarray


@dataclass(frozen=True)
class Verdict:
    """One train reply's outcome: ``kind`` is "contribution" (with its update and statistics), "failed" (an error
    reply: ``reason`` is its reason code) or "rejected" (malformed: ``reason`` says why)."""

    kind: str
    reason: str = ""
    update: Arrays | None = None
    statistics: np.ndarray | None = None


def _only_record(content: RecordDict, name: str) -> tuple[ArrayRecord | None, str]:
    """The content's one record, an ArrayRecord called ``name``, or None and why not."""
    if list(content.keys()) != [name]:
        return None, f"expected exactly one record {name!r}, found {sorted(content.keys())[:5]}"
    record = content[name]
    if not isinstance(record, ArrayRecord):
        return None, f"record {name!r} is a {type(record).__name__}, expected an ArrayRecord"
    return record, ""


def _decode(name: str, array: Array, reference: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The array in the model's dtype, or None and why it cannot be used (the declared metadata may lie)."""
    try:
        value = array_like(array, reference)
    except Exception as error:  # noqa: BLE001 - any failure to decode hostile bytes is a rejection
        return None, f"array {name!r} does not decode ({type(error).__name__})"
    if not np.issubdtype(value.dtype, np.floating):
        return None, f"array {name!r} has dtype {value.dtype}, expected floating point"
    if value.shape != reference.shape:
        return None, f"array {name!r} decodes to shape {value.shape}, expected {reference.shape}"
    with np.errstate(over="ignore", invalid="ignore"):
        value = value.astype(MODEL_DTYPE, copy=False)
    if not np.all(np.isfinite(value)):
        return None, f"array {name!r} holds NaN or Inf in the model's precision ({np.dtype(MODEL_DTYPE).name})"
    return value, ""


def _statistics_reference() -> np.ndarray:
    return np.zeros(len(STATISTICS), dtype=MODEL_DTYPE)


def _judge_content(content: RecordDict, reference: Arrays) -> Verdict:
    record, why = _only_record(content, CONTRIBUTION)
    if record is None:
        return Verdict("rejected", why)
    expected = {**reference, STATISTICS_ARRAY: _statistics_reference()}
    if set(record) != set(expected):
        missing, extra = sorted(set(expected) - set(record))[:3], sorted(set(record) - set(expected))[:3]
        return Verdict("rejected", f"array names differ from the contribution's (missing {missing}, extra {extra})")
    values = {}
    for name, array in record.items():
        if tuple(array.shape) != expected[name].shape:
            return Verdict("rejected", f"array {name!r} has shape {tuple(array.shape)}, expected {expected[name].shape}")
        value, why = _decode(name, array, expected[name])
        if value is None:
            return Verdict("rejected", why)
        values[name] = value
    statistics = values.pop(STATISTICS_ARRAY)
    return Verdict("contribution", update=values, statistics=statistics)


_TRANSPORT_FAILURES = {
    ErrorCode.MESSAGE_UNAVAILABLE: "message-unavailable",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "reply-unavailable",
    ErrorCode.NODE_UNAVAILABLE: "node-unavailable",
    ErrorCode.CLIENT_APP_CRASHED: "client-app-crashed",
}
"""Errors Flower's SuperLink or SuperNode writes in a device's place (a dead node, a lost message), by code."""


def _failure(reply: Message) -> str:
    """An error reply's reason code, Flower's label for a transport failure, or a short label for anything else.

    The reason text is echoed only when it is one of our codes: free text could carry a path or a value.
    """
    reason = str(reply.error.reason)
    if reason in REASON_CODES:
        return reason
    code = reply.error.code
    return _TRANSPORT_FAILURES.get(code, f"unrecognised error (code {code})")


def judge_reply(reply: Message, reference: Arrays) -> Verdict:
    """Check one device's train reply against the global arrays ``reference`` it was trained from."""
    if reply.has_error():
        return Verdict("failed", _failure(reply))
    return _judge_content(reply.content, reference)


def judge_slot_reply(reply: Message, users: int, reference: Arrays) -> list[Verdict]:
    """One verdict per user of a slot's train reply (``users`` were named in the message, in this order).

    An error reply fails every user of the message: the slot's worker failed before it could answer for any.
    Records outside every user's part make the whole reply malformed.
    """
    if reply.has_error():
        return [Verdict("failed", _failure(reply))] * users
    parts = user_parts(reply.content, users)
    if sum(len(part) for part in parts) != len(reply.content):
        return [Verdict("rejected", "the reply holds records outside its users' parts")] * users
    return [_judge_content(part, reference) for part in parts]


def _scores(content: RecordDict) -> np.ndarray | None:
    """A device's scores in [0, 1] (float64), or None when the content is not exactly the declared record."""
    record, _ = _only_record(content, EVALUATION)
    if record is None or list(record.keys()) != [SCORES_ARRAY]:
        return None
    value, _ = _decode(SCORES_ARRAY, record[SCORES_ARRAY], np.zeros(len(EVAL_SCORES), dtype=MODEL_DTYPE))
    return None if value is None else np.clip(value.astype(np.float64), 0.0, 1.0)


def evaluation_scores(reply: Message) -> np.ndarray | None:
    """A device's evaluation scores, clamped to [0, 1], or None when its reply failed or is malformed."""
    return None if reply.has_error() else _scores(reply.content)


def slot_evaluation_scores(reply: Message, users: int) -> list[np.ndarray | None]:
    """Each of a slot's ``users``' evaluation scores, checked as ``evaluation_scores`` checks a device's."""
    if reply.has_error():
        return [None] * users
    return [_scores(part) for part in user_parts(reply.content, users)]
