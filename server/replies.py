"""Judging each reply of a round: a usable update, a decline, an error, or a malformed reply rejected and counted.

Aggregation never sees a reply that does not carry exactly the global model's arrays (same names, shapes, a
floating-point dtype, bytes that decode to them) with finite values, and the declared scalar metrics, its
``num-examples`` a whole number from 1 to the cap the server set (FedAvg weights by it: a client claiming more
examples than it was allowed to train on, or zero or fewer, would steer or break the weighted mean). A hostile
client controls every byte of its reply; nothing in it may raise here.

A simulation slot's reply joins several users' records (``protocol.records``); each user's part is judged on its own,
exactly as a device's reply would be, so one malformed user costs only its own update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from protocol.metrics import EVAL_METRICS, TRAIN_METRICS
from protocol.records import array_like, user_parts


@dataclass(frozen=True)
class ClientUpdate:
    node_id: int
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]


def _problem(metric_records: dict[str, MetricRecord], array_records: dict[str, ArrayRecord],
             reference: dict[str, np.ndarray], max_examples: int | None) -> str | None:
    """Why a reply's records (``RecordDict.metric_records`` and ``array_records``, each built anew on every access,
    so read once) cannot be aggregated, or None."""
    if len(metric_records) != 1:
        return f"expected one MetricRecord, found {len(metric_records)}"
    metrics = next(iter(metric_records.values()))
    if set(metrics) != set(TRAIN_METRICS):
        return f"metrics {sorted(metrics)} are not the declared {sorted(TRAIN_METRICS)}"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()):
        return "a metric is not a finite number"
    if metrics["declined"]:
        return None
    examples = metrics["num-examples"]
    if examples != int(examples) or examples < 1 or (max_examples is not None and examples > max_examples):
        cap = f"at most train.max_examples = {max_examples}" if max_examples is not None else "no cap set"
        return f"num-examples must be a whole number >= 1 ({cap}); found {examples}"
    if len(array_records) != 1:
        return f"expected one ArrayRecord, found {len(array_records)}"
    arrays = next(iter(array_records.values()))
    if set(arrays) != set(reference):
        return f"array names differ from the global model's (missing {sorted(set(reference) - set(arrays))[:3]}, extra {sorted(set(arrays) - set(reference))[:3]})"
    for name, array in arrays.items():
        if tuple(array.shape) != reference[name].shape:
            return f"array {name!r} has shape {tuple(array.shape)}, expected {reference[name].shape}"
    return None


def _decoded(record: ArrayRecord, reference: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray] | None, str]:
    """The reply's arrays, or None and why they cannot be aggregated (the declared metadata may lie)."""
    arrays = {}
    for name, array in record.items():
        try:
            value = array_like(array, reference[name])  # names were checked against the reference
        except Exception as error:  # noqa: BLE001 - any failure to decode hostile bytes is a rejection
            return None, f"array {name!r} does not decode ({type(error).__name__})"
        if not np.issubdtype(value.dtype, np.floating):
            return None, f"array {name!r} has dtype {value.dtype}, expected floating point"
        if value.shape != reference[name].shape:
            return None, f"array {name!r} decodes to shape {value.shape}, expected {reference[name].shape}"
        if not np.all(np.isfinite(value)):
            return None, "arrays contain NaN or Inf"
        arrays[name] = value
    return arrays, ""


@dataclass(frozen=True)
class Verdict:
    """One train reply's outcome: ``kind`` is "update" (with its arrays and metrics), "declined", "failed" (an
    error reply) or "rejected" (malformed); ``reason`` says why for the last three."""

    kind: str
    reason: str = ""
    arrays: dict[str, np.ndarray] | None = None
    metrics: dict[str, float] | None = None


def _judge_content(content: RecordDict, reference: dict[str, np.ndarray], max_examples: int | None) -> Verdict:
    metric_records, array_records = content.metric_records, content.array_records
    problem = _problem(metric_records, array_records, reference, max_examples)
    if problem is not None:
        return Verdict("rejected", problem)
    metrics = dict(next(iter(metric_records.values())))
    if metrics["declined"]:
        return Verdict("declined", str(content.config_records.get("status", {}).get("declined", "no reason given")))
    arrays, why = _decoded(next(iter(array_records.values())), reference)
    if arrays is None:
        return Verdict("rejected", why)
    return Verdict("update", arrays={k: a.astype(np.float32, copy=False) for k, a in arrays.items()}, metrics=metrics)


def _failure(reply: Message) -> str:
    return str(reply.error.reason)[-300:]


def judge_reply(reply: Message, reference: dict[str, np.ndarray], *, max_examples: int | None = None) -> Verdict:
    """Check one device's train reply against the global arrays ``reference`` it was trained from.

    ``max_examples`` caps the ``num-examples`` a reply may claim (the server's ``train.max_examples``; None: no cap).
    """
    if reply.has_error():
        return Verdict("failed", _failure(reply))
    return _judge_content(reply.content, reference, max_examples)


def judge_slot_reply(reply: Message, users: int, reference: dict[str, np.ndarray], *,
                     max_examples: int | None = None) -> list[Verdict]:
    """One verdict per user of a slot's train reply (``users`` were named in the message, in this order).

    An error reply fails every user of the message: the slot's worker raised before it could answer for any.
    """
    if reply.has_error():
        return [Verdict("failed", _failure(reply))] * users
    return [_judge_content(part, reference, max_examples) for part in user_parts(reply.content, users)]


def _evaluation_metrics(content: RecordDict) -> dict[str, float] | None:
    if len(content.metric_records) != 1:
        return None
    metrics = dict(next(iter(content.metric_records.values())))
    if set(metrics) != set(EVAL_METRICS):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in metrics.values()):
        return None
    examples = metrics["num-examples"]
    if examples != int(examples) or examples < 0:
        return None
    if any(not 0.0 <= metrics[k] <= 1.0 for k in ("eval-top1", "personal-top1")) or min(metrics["eval-nll"], metrics["personal-nll"]) < 0.0:
        return None
    return metrics


def evaluation_metrics(reply: Message) -> dict[str, float] | None:
    """A device's evaluate metrics, or None when its reply failed or does not hold exactly the declared ones
    (finite numbers, ``num-examples`` a whole number >= 0, top-1 in [0, 1], NLL >= 0)."""
    return None if reply.has_error() else _evaluation_metrics(reply.content)


def slot_evaluation_metrics(reply: Message, users: int) -> list[dict[str, float] | None]:
    """Each of a slot's ``users``' evaluate metrics, checked as ``evaluation_metrics`` checks a device's."""
    if reply.has_error():
        return [None] * users
    return [_evaluation_metrics(part) for part in user_parts(reply.content, users)]
