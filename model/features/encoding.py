"""Behaviour events -> fixed-width float vectors, and prediction examples for training.

Feature layout of one event (``FEATURE_DIM`` = 93 floats): the seed's table (the first 41), then what the request
says and what the user has been keeping lately.

====================  =====  =====================================================================
slice                 width  meaning
====================  =====  =====================================================================
``GENRE``             9      style one-hot (8 genres + "no genre"); the model embeds it
``BPM``               4      normalised tempo (bpm-20)/280, has-tempo flag, direction up, down
``INSTRUMENTS``       17     multi-hot over the 16 instruments, then toggle sign (+1 on, -1 off)
``KIND``              6      action category one-hot
``TIME``              5      sin/cos hour of day, sin/cos day of week (local time), log gap to previous
``REQUEST``           44     a ``generation_requested`` event's prompt, read on the device by
                             ``model.features.prompt_intent``: genres named (8), genres ruled out (8), moods (9),
                             tempo word slow/medium/fast (3), instruments named (16); zeros otherwise
``RECENT``            8      decayed counts of the genres the user kept, after this event: each kept
                             segment adds 1 to its genre after every count is multiplied by
                             ``RECENT_DECAY`` (a user's last ~7 keeps dominate)
====================  =====  =====================================================================

The prompt's text never leaves the device: only these features reach the model, and only model updates leave.
``EventEncoder`` carries the two things a row depends on besides its event (the previous event's time and the
decayed counts), so a stream encodes one event at a time exactly as ``encode_events`` encodes a whole log.

A prediction point is every ``generation_requested`` event: the moment the app must condition ACE-Step. Its
history is the window of events up to and including the request, and its target is the genre of the user's next
``segment_kept`` after it. Points with no later kept segment have no target and are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from model.features.prompt_intent import MOOD_PATTERNS, TEMPO_PATTERNS, parse_prompt
from model.log.events import Event
from model.log.vocab import BPM_MAX, BPM_MIN, GENRE_INDEX, GENRES, INSTRUMENT_INDEX, INSTRUMENTS, KIND_INDEX

NO_GENRE = len(GENRES)
GENRE = slice(0, len(GENRES) + 1)
BPM = slice(GENRE.stop, GENRE.stop + 4)
INSTRUMENT_SLOTS = slice(BPM.stop, BPM.stop + len(INSTRUMENTS) + 1)
KIND = slice(INSTRUMENT_SLOTS.stop, INSTRUMENT_SLOTS.stop + len(KIND_INDEX))
TIME = slice(KIND.stop, KIND.stop + 5)
MOODS: tuple[str, ...] = tuple(MOOD_PATTERNS)
TEMPOS: tuple[str, ...] = tuple(TEMPO_PATTERNS)
REQUEST = slice(TIME.stop, TIME.stop + 2 * len(GENRES) + len(MOODS) + len(TEMPOS) + len(INSTRUMENTS))
NAMED_GENRES = slice(REQUEST.start, REQUEST.start + len(GENRES))
EXCLUDED_GENRES = slice(NAMED_GENRES.stop, NAMED_GENRES.stop + len(GENRES))
RECENT = slice(REQUEST.stop, REQUEST.stop + len(GENRES))
FEATURE_DIM = RECENT.stop
GENRE_SLOTS = GENRE.stop

RECENT_DECAY = 0.85
"""Per kept segment, the weight left to every earlier keep in ``RECENT``: the 7th-latest keep counts ~1/3."""

_GAP_SCALE = math.log1p(24.0 * 28)  # a four-week gap encodes as ~1.0
_MOOD_INDEX = {name: i for i, name in enumerate(MOODS)}
_TEMPO_INDEX = {name: i for i, name in enumerate(TEMPOS)}


@lru_cache(maxsize=4096)
def request_features(prompt: str) -> tuple[float, ...]:
    """The ``REQUEST`` slice of a prompt (see the module docstring); cached, as people repeat their requests.

    The cache lives in the device's own process memory; the text is never written anywhere.
    """
    intent = parse_prompt(prompt)
    out = [0.0] * (REQUEST.stop - REQUEST.start)
    moods_at = 2 * len(GENRES)
    tempos_at = moods_at + len(MOODS)
    instruments_at = tempos_at + len(TEMPOS)
    for genre in intent.genres:
        out[GENRE_INDEX[genre]] = 1.0
    for genre in intent.excluded_genres:
        out[len(GENRES) + GENRE_INDEX[genre]] = 1.0
    for mood in intent.moods:
        out[moods_at + _MOOD_INDEX[mood]] = 1.0
    if intent.tempo is not None:
        out[tempos_at + _TEMPO_INDEX[intent.tempo]] = 1.0
    for name in intent.instruments:
        out[instruments_at + INSTRUMENT_INDEX[name]] = 1.0
    return tuple(out)


@dataclass
class EventEncoder:
    """Encodes one user's events in time order, one at a time, carrying what a row depends on besides its event.

    Attributes:
        last_ts: UTC seconds of the previous event, ``None`` before the first.
        recent: the ``RECENT`` counts after the previous event (float32 ``[8]``).
    """

    last_ts: float | None = None
    recent: np.ndarray = field(default_factory=lambda: np.zeros(len(GENRES), dtype=np.float32))

    def encode(self, event: Event, row: np.ndarray | None = None) -> np.ndarray:
        """The features ``[FEATURE_DIM]`` of ``event`` (written into ``row`` when given), then advance."""
        if row is None:
            row = np.zeros(FEATURE_DIM, dtype=np.float32)
        _encode_row(row, event, self.last_ts)
        if event.kind == "segment_kept" and event.genre is not None:
            self.recent = self.recent * np.float32(RECENT_DECAY)
            self.recent[GENRE_INDEX[event.genre]] += 1.0
        row[RECENT] = self.recent
        self.last_ts = event.ts
        return row


def encode_events(events: Sequence[Event]) -> np.ndarray:
    """Encode a user's chronologically ordered events into a float32 array ``[len(events), FEATURE_DIM]``."""
    out = np.zeros((len(events), FEATURE_DIM), dtype=np.float32)
    encoder = EventEncoder()
    for row, event in zip(out, events):
        encoder.encode(event, row)
    return out


def _encode_row(row: np.ndarray, event: Event, previous_ts: float | None) -> None:
    """Fill every slice of ``row`` but ``RECENT`` for ``event``, the previous event being at ``previous_ts``."""
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
    if event.kind == "generation_requested" and event.prompt:
        row[REQUEST] = request_features(event.prompt)


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


def build_examples(events: Sequence[Event], window: int) -> Examples:
    """One example per prediction point (``prediction_points``).

    Args:
        events: one user's log, oldest first.
        window: the most recent events (request included) a prediction may read.
    """
    if window < 1:
        raise ValueError(f"window must be a positive number of events; found {window}.")
    points = prediction_points(events)
    n = len(points)
    if n == 0:
        return empty_examples(window)
    encoded = encode_events(events)
    x = np.zeros((n, window, FEATURE_DIM), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    for k, (row, _) in enumerate(points):
        start = max(0, row - window + 1)
        length = row + 1 - start
        x[k, :length] = encoded[start : row + 1]
        lengths[k] = length
    times = np.array([events[row].ts for row, _ in points], dtype=np.float64)
    targets = torch.tensor([genre for _, genre in points])
    return Examples(torch.from_numpy(x), torch.from_numpy(lengths), targets, torch.from_numpy(times))


def split_recent(examples: Examples, eval_fraction: float) -> tuple[Examples, Examples]:
    """Split one user's examples in time: the most recent ``eval_fraction`` are held out for evaluation."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1); found {eval_fraction}.")
    n_eval = int(round(len(examples) * eval_fraction))
    cut = len(examples) - n_eval
    return examples.subset(slice(0, cut)), examples.subset(slice(cut, len(examples)))
