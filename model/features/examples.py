"""Prediction examples: one user's encoded log cut into right-padded windows, each with the genre to predict.

A prediction point is every ``generation_requested`` event: the moment the app must condition ACE-Step. Its
history is the window of events up to and including the request (rows of ``model.features.encoding``), and its
target is the genre of the user's next ``segment_kept`` after it. Points with no later kept segment have no target
and are dropped. The most recent points of a device are held out for its own evaluation (``split_recent``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from model.features.encoding import FEATURE_DIM, encode_events
from model.log.events import Event
from model.log.vocab import GENRE_INDEX


@dataclass
class Examples:
    """Right-padded prediction windows of one or more users.

    Attributes:
        x: float32 ``[N, T, FEATURE_DIM]``, zeros after each window's length.
        lengths: int64 ``[N]``, each in ``1..T``.
        targets: int64 ``[N]``, genre index of the next kept segment.
        times: float64 ``[N]``, UTC time of each prediction point (for chronological splits).
    """

    x: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    times: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, index: torch.Tensor | slice) -> "Examples":
        return Examples(self.x[index], self.lengths[index], self.targets[index], self.times[index])

    @staticmethod
    def concat(parts: Sequence["Examples"], window: int) -> "Examples":
        """Concatenate example sets (all built with the same ``window``); an empty list gives an empty set."""
        if not parts:
            return empty_examples(window)
        return Examples(
            torch.cat([p.x for p in parts]),
            torch.cat([p.lengths for p in parts]),
            torch.cat([p.targets for p in parts]),
            torch.cat([p.times for p in parts]),
        )


def empty_examples(window: int) -> Examples:
    return Examples(
        torch.zeros((0, window, FEATURE_DIM)),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.float64),
    )


def prediction_points(events: Sequence[Event]) -> list[tuple[int, int]]:
    """``(row of the generation_requested event, genre index of the next segment_kept after it)`` for every request
    that is followed by a kept segment, in time order: the prediction points of one user's log."""
    points: list[tuple[int, int]] = []
    pending: list[int] = []  # requests still waiting for their next kept segment
    for i, event in enumerate(events):
        if event.kind == "generation_requested":
            pending.append(i)
        elif event.kind == "segment_kept" and pending:
            genre = GENRE_INDEX[event.genre]  # type: ignore[index]
            points.extend((row, genre) for row in pending)
            pending.clear()
    return points


@dataclass(frozen=True)
class EncodedLog:
    """One user's log in the compact form its examples are cut from: ``build_examples`` is ``windows(encode_log(
    events), window)``. Each event is in up to ``window`` examples, so this is ~7 times smaller at ``window`` 32.

    Attributes:
        features: float32 ``[n, FEATURE_DIM]``, the encoded events up to the last prediction point (the later ones
            are in no window).
        rows: int64 ``[P]``, the row of each prediction point (``prediction_points``) in ``features``, in time order.
        targets: int64 ``[P]``, the genre index each point predicts.
        times: float64 ``[P]``, the UTC time of each point.
    """

    features: np.ndarray
    rows: np.ndarray
    targets: np.ndarray
    times: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.features.nbytes + self.rows.nbytes + self.targets.nbytes + self.times.nbytes


def encode_log(events: Sequence[Event]) -> EncodedLog:
    """The compact form of one user's log, oldest event first (see ``EncodedLog``)."""
    points = prediction_points(events)
    rows = np.array([row for row, _ in points], dtype=np.int64)
    end = int(rows[-1]) + 1 if points else 0
    return EncodedLog(encode_events(events[:end]), rows, np.array([genre for _, genre in points], dtype=np.int64),
                      np.array([events[row].ts for row, _ in points], dtype=np.float64))


def windows(log: EncodedLog, window: int) -> Examples:
    """One example per prediction point of ``log``: the last ``window`` events (request included) up to it.

    The windows are gathered with one index array ``[P, window]`` (short ones repeat their last row, then are
    zeroed past their length); the examples share no memory with ``log``.
    """
    if window < 1:
        raise ValueError(f"window must be a positive number of events; found {window}.")
    if len(log.rows) == 0:
        return empty_examples(window)
    steps = np.arange(window)
    starts = np.maximum(log.rows - (window - 1), 0)
    lengths = log.rows + 1 - starts
    x = np.take(log.features, np.minimum(starts[:, None] + steps, log.rows[:, None]), axis=0)
    x[steps >= lengths[:, None]] = 0.0
    return Examples(torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(log.targets.copy()),
                    torch.from_numpy(log.times.copy()))


def build_examples(events: Sequence[Event], window: int) -> Examples:
    """One example per prediction point (``prediction_points``).

    Args:
        events: one user's log, oldest first.
        window: the most recent events (request included) a prediction may read.
    """
    return windows(encode_log(events), window)


def split_recent(examples: Examples, eval_fraction: float) -> tuple[Examples, Examples]:
    """Split one user's examples in time: the most recent ``eval_fraction`` are held out for evaluation."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1); found {eval_fraction}.")
    n_eval = int(round(len(examples) * eval_fraction))
    cut = len(examples) - n_eval
    return examples.subset(slice(0, cut)), examples.subset(slice(cut, len(examples)))
