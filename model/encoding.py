"""Behaviour events -> fixed-width float vectors, and prediction examples for training.

Feature layout of one event (the seed's table, ``FEATURE_DIM`` = 41 floats):

====================  =====  =====================================================================
slice                 width  meaning
====================  =====  =====================================================================
``GENRE``             9      style one-hot (8 genres + "no genre"); the model embeds it to 32 dims
``BPM``               4      normalised tempo (bpm-20)/280, has-tempo flag, direction up, down
``INSTRUMENTS``       17     multi-hot over the 16 instruments, then toggle sign (+1 on, -1 off)
``KIND``              6      action category one-hot
``TIME``              5      sin/cos hour of day, sin/cos day of week (local time), log gap to previous
====================  =====  =====================================================================

A prediction point is every ``generation_requested`` event: the moment the app must condition ACE-Step. Its
history is the window of events up to and including the request, and its target is the genre of the user's next
``segment_kept`` after it. Points with no later kept segment have no target and are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from model.events import Event
from model.vocab import BPM_MAX, BPM_MIN, GENRE_INDEX, GENRES, INSTRUMENT_INDEX, INSTRUMENTS, KIND_INDEX

NO_GENRE = len(GENRES)
GENRE = slice(0, len(GENRES) + 1)
BPM = slice(GENRE.stop, GENRE.stop + 4)
INSTRUMENT_SLOTS = slice(BPM.stop, BPM.stop + len(INSTRUMENTS) + 1)
KIND = slice(INSTRUMENT_SLOTS.stop, INSTRUMENT_SLOTS.stop + len(KIND_INDEX))
TIME = slice(KIND.stop, KIND.stop + 5)
FEATURE_DIM = TIME.stop
GENRE_SLOTS = GENRE.stop

_GAP_SCALE = math.log1p(24.0 * 28)  # a four-week gap encodes as ~1.0


def encode_events(events: Sequence[Event]) -> np.ndarray:
    """Encode a user's chronologically ordered events into a float32 array ``[len(events), FEATURE_DIM]``."""
    out = np.zeros((len(events), FEATURE_DIM), dtype=np.float32)
    previous_ts: float | None = None
    for row, event in zip(out, events):
        row[GENRE.start + (GENRE_INDEX[event.genre] if event.genre is not None else NO_GENRE)] = 1.0
        if event.bpm is not None:
            row[BPM.start] = (event.bpm - BPM_MIN) / (BPM_MAX - BPM_MIN)
            row[BPM.start + 1] = 1.0
        if event.direction is not None:
            row[BPM.start + 2 + (0 if event.direction == "up" else 1)] = 1.0
        for name in event.instruments or ():
            row[INSTRUMENT_SLOTS.start + INSTRUMENT_INDEX[name]] = 1.0
        if event.instrument is not None:
            row[INSTRUMENT_SLOTS.start + INSTRUMENT_INDEX[event.instrument]] = 1.0
            row[INSTRUMENT_SLOTS.stop - 1] = 1.0 if event.enabled else -1.0
        row[KIND.start + KIND_INDEX[event.kind]] = 1.0
        local = event.ts + 60.0 * event.utc_offset_min
        hour_angle = 2.0 * math.pi * (local % 86400.0) / 86400.0
        # 1970-01-01 was a Thursday: +3 makes Monday = 0.
        day_angle = 2.0 * math.pi * (((local // 86400.0) + 3) % 7 + (local % 86400.0) / 86400.0) / 7.0
        gap_hours = 0.0 if previous_ts is None else max(event.ts - previous_ts, 0.0) / 3600.0
        row[TIME] = (
            math.sin(hour_angle),
            math.cos(hour_angle),
            math.sin(day_angle),
            math.cos(day_angle),
            math.log1p(gap_hours) / _GAP_SCALE,
        )
        previous_ts = event.ts
    return out


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


def build_examples(events: Sequence[Event], window: int) -> Examples:
    """One example per ``generation_requested`` event that is followed by a kept segment.

    Args:
        events: one user's log, oldest first.
        window: the most recent events (request included) a prediction may read.
    """
    if window < 1:
        raise ValueError(f"window must be a positive number of events; found {window}.")
    encoded = encode_events(events)
    request_rows: list[int] = []
    targets: list[int] = []
    pending: list[int] = []  # requests still waiting for their next kept segment
    for i, event in enumerate(events):
        if event.kind == "generation_requested":
            pending.append(i)
        elif event.kind == "segment_kept" and pending:
            genre = GENRE_INDEX[event.genre]  # type: ignore[index]
            request_rows.extend(pending)
            targets.extend([genre] * len(pending))
            pending.clear()
    n = len(request_rows)
    if n == 0:
        return empty_examples(window)
    x = np.zeros((n, window, FEATURE_DIM), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    for k, row in enumerate(request_rows):
        start = max(0, row - window + 1)
        length = row + 1 - start
        x[k, :length] = encoded[start : row + 1]
        lengths[k] = length
    times = np.array([events[r].ts for r in request_rows], dtype=np.float64)
    return Examples(torch.from_numpy(x), torch.from_numpy(lengths), torch.tensor(targets), torch.from_numpy(times))


def split_recent(examples: Examples, eval_fraction: float) -> tuple[Examples, Examples]:
    """Split one user's examples in time: the most recent ``eval_fraction`` are held out for evaluation."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1); found {eval_fraction}.")
    n_eval = int(round(len(examples) * eval_fraction))
    cut = len(examples) - n_eval
    return examples.subset(slice(0, cut)), examples.subset(slice(cut, len(examples)))
