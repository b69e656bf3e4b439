"""Sorting a round's replies: usable updates, declines, errors, and malformed replies rejected and counted.

Aggregation never sees a reply that does not carry exactly the global model's arrays (same names, shapes) with
finite values, and the declared scalar metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from client.local_update import TRAIN_METRICS
from client.records import from_array_record


@dataclass(frozen=True)
class ClientUpdate:
    node_id: int
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]


@dataclass
class SortedReplies:
    updates: list[ClientUpdate] = field(default_factory=list)
    declined: list[tuple[int, str]] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def _problem(message: Message, reference: dict[str, np.ndarray]) -> str | None:
    content = message.content
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, found {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    if set(metrics) != set(TRAIN_METRICS):
        return f"metrics {sorted(metrics)} are not the declared {sorted(TRAIN_METRICS)}"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()):
        return "a metric is not a finite number"
    if metrics["declined"]:
        return None
    if len(content.array_records) != 1:
        return f"expected one ArrayRecord, found {len(content.array_records)}"
    arrays = next(iter(content.array_records.values()))
    if set(arrays) != set(reference):
        return f"array names differ from the global model's (missing {sorted(set(reference) - set(arrays))[:3]}, extra {sorted(set(arrays) - set(reference))[:3]})"
    for name, array in arrays.items():
        if tuple(array.shape) != reference[name].shape:
            return f"array {name!r} has shape {tuple(array.shape)}, expected {reference[name].shape}"
    return None


def sort_replies(replies: list[Message], reference: dict[str, np.ndarray]) -> SortedReplies:
    """Classify replies against the global arrays ``reference`` they were trained from."""
    out = SortedReplies()
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            out.failed.append((node, str(reply.error.reason)[-300:]))
            continue
        problem = _problem(reply, reference)
        if problem is not None:
            out.rejected.append((node, problem))
            continue
        metrics = dict(next(iter(reply.content.metric_records.values())))
        if metrics["declined"]:
            reason = reply.content.config_records.get("status", {}).get("declined", "no reason given")
            out.declined.append((node, str(reason)))
            continue
        arrays = from_array_record(next(iter(reply.content.array_records.values())))
        if not all(np.all(np.isfinite(a)) for a in arrays.values()):
            out.rejected.append((node, "arrays contain NaN or Inf"))
            continue
        out.updates.append(ClientUpdate(node, {k: a.astype(np.float32, copy=False) for k, a in arrays.items()}, metrics))
    return out
