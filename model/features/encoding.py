"""Behaviour events -> fixed-width float vectors (the prediction examples cut from them: ``model.features.examples``).

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Sequence

import numpy as np

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
_LINE_UP = slice(INSTRUMENT_SLOTS.start, INSTRUMENT_SLOTS.stop - 1)
_TOGGLE = INSTRUMENT_SLOTS.stop - 1

RECENT_DECAY = 0.85
"""Per kept segment, the weight left to every earlier keep in ``RECENT``: the 7th-latest keep counts ~1/3."""

_GAP_SCALE = math.log1p(24.0 * 28)  # a four-week gap encodes as ~1.0
_MOOD_INDEX = {name: i for i, name in enumerate(MOODS)}
_TEMPO_INDEX = {name: i for i, name in enumerate(TEMPOS)}
_GENRE_CODE: dict[str | None, int] = {**GENRE_INDEX, None: NO_GENRE}
_KEPT = KIND_INDEX["segment_kept"]
_REQUESTED = KIND_INDEX["generation_requested"]
_EVENT_FIELDS = attrgetter("ts", "utc_offset_min", "kind", "genre", "bpm", "direction", "instrument", "instruments")
"""The fields ``encode_all`` reads of every event (``enabled`` and ``prompt`` only matter with a toggle, a request)."""


@lru_cache(maxsize=4096)
def request_features(prompt: str) -> np.ndarray:
    """The ``REQUEST`` slice of a prompt (see the module docstring), float32 and read-only; cached, as people repeat
    their requests.

    The cache lives in the device's own process memory; the text is never written anywhere.
    """
    intent = parse_prompt(prompt)
    out = np.zeros(REQUEST.stop - REQUEST.start, dtype=np.float32)
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
    out.flags.writeable = False
    return out


@dataclass
class EventEncoder:
    """Encodes one user's events in time order, carrying what a row depends on besides its event.

    Two ways give the same rows (tests prove it on whole logs): ``encode`` reads one event at a time, ~2 us each (a
    device's stream); ``encode_all`` reads a batch column group by column group, one indexed write per group instead
    of one per event and field (a whole log, ~1.7 times faster per event). They share their formulas (``_tempo``,
    ``_angles``, ``_after_keep`` ...) and do the same float operations in the same order.

    Attributes:
        last_ts: UTC seconds of the previous event, ``None`` before the first.
        recent: the ``RECENT`` counts after the previous event (float32 ``[8]``).
    """

    last_ts: float | None = None
    recent: np.ndarray = field(default_factory=lambda: np.zeros(len(GENRES), dtype=np.float32))

    def encode(self, event: Event) -> np.ndarray:
        """The features ``[FEATURE_DIM]`` of ``event``, then advance."""
        row = np.zeros(FEATURE_DIM, dtype=np.float32)
        row[GENRE.start + _GENRE_CODE[event.genre]] = 1.0
        if event.bpm is not None:
            row[BPM.start] = _tempo(event.bpm)
            row[BPM.start + 1] = 1.0
        if event.direction is not None:
            row[_direction_column(event.direction)] = 1.0
        if event.instruments:
            row[_LINE_UP] = _multi_hot(event.instruments)
        if event.instrument is not None:
            row[INSTRUMENT_SLOTS.start + INSTRUMENT_INDEX[event.instrument]] = 1.0
            row[_TOGGLE] = 1.0 if event.enabled else -1.0
        row[KIND.start + KIND_INDEX[event.kind]] = 1.0
        hour_angle, day_angle = _angles(event.ts + 60.0 * event.utc_offset_min)
        gap_hours = 0.0 if self.last_ts is None else max(event.ts - self.last_ts, 0.0) / 3600.0
        row[TIME] = (math.sin(hour_angle), math.cos(hour_angle), math.sin(day_angle), math.cos(day_angle),
                     math.log1p(gap_hours) / _GAP_SCALE)
        if event.kind == "generation_requested" and event.prompt:
            row[REQUEST] = request_features(event.prompt)
        if event.kind == "segment_kept" and event.genre is not None:
            self.recent = _after_keep(self.recent, GENRE_INDEX[event.genre])
        row[RECENT] = self.recent
        self.last_ts = event.ts
        return row

    def encode_all(self, events: Sequence[Event]) -> np.ndarray:
        """The features ``[len(events), FEATURE_DIM]`` of ``events`` (oldest first), then advance past them."""
        out = np.zeros((len(events), FEATURE_DIM), dtype=np.float32)
        if not events:
            return out
        ts, offsets, kinds, genres, bpms, directions, instruments, line_ups = zip(*map(_EVENT_FIELDS, events))
        every = np.arange(len(events))
        genre_codes = np.fromiter(map(_GENRE_CODE.__getitem__, genres), np.intp, len(events))
        kind_codes = np.fromiter(map(KIND_INDEX.__getitem__, kinds), np.intp, len(events))
        out[every, GENRE.start + genre_codes] = 1.0
        rows = [row for row, bpm in enumerate(bpms) if bpm is not None]
        out[rows, BPM.start] = _tempo(np.array([bpms[row] for row in rows], dtype=np.float64))
        out[rows, BPM.start + 1] = 1.0
        rows = [row for row, direction in enumerate(directions) if direction is not None]
        out[rows, [_direction_column(directions[row]) for row in rows]] = 1.0
        rows = [row for row, names in enumerate(line_ups) if names]
        if rows:
            out[rows, _LINE_UP] = np.concatenate([_multi_hot(line_ups[row]) for row in rows]).reshape(len(rows), -1)
        rows = [row for row, name in enumerate(instruments) if name is not None]
        out[rows, [INSTRUMENT_SLOTS.start + INSTRUMENT_INDEX[instruments[row]] for row in rows]] = 1.0
        out[rows, _TOGGLE] = [1.0 if events[row].enabled else -1.0 for row in rows]
        out[every, KIND.start + kind_codes] = 1.0
        out[:, TIME] = _time_columns(ts, offsets, self.last_ts)
        requests = np.flatnonzero(kind_codes == _REQUESTED).tolist()
        prompts = [events[row].prompt for row in requests]
        rows = [row for row, prompt in zip(requests, prompts) if prompt]
        if rows:
            out[rows, REQUEST] = np.concatenate([request_features(p) for p in prompts if p]).reshape(len(rows), -1)
        kept = (kind_codes == _KEPT) & (genre_codes != NO_GENRE)
        kept_genres = genre_codes[kept].tolist()
        counts = np.empty((len(kept_genres) + 1, len(GENRES)), dtype=np.float32)  # after each keep, in order
        counts[0] = self.recent
        after = list(counts)
        for before, now, genre in zip(after, after[1:], kept_genres):
            _after_keep(before, genre, out=now)
        out[:, RECENT] = counts[np.cumsum(kept)]
        self.recent, self.last_ts = counts[-1].copy(), ts[-1]
        return out


def encode_events(events: Sequence[Event]) -> np.ndarray:
    """Encode a user's chronologically ordered events into a float32 array ``[len(events), FEATURE_DIM]``."""
    return EventEncoder().encode_all(events)


def _tempo(bpm: float | np.ndarray) -> float | np.ndarray:
    """The normalised tempo of ``bpm`` (a number or an array of them)."""
    return (bpm - BPM_MIN) / (BPM_MAX - BPM_MIN)


def _direction_column(direction: str) -> int:
    return BPM.start + (2 if direction == "up" else 3)


@lru_cache(maxsize=1024)
def _multi_hot(names: tuple[str, ...]) -> np.ndarray:
    """The ``_LINE_UP`` columns of a segment's instruments, float32 and read-only; cached, as line-ups repeat."""
    out = np.zeros(_LINE_UP.stop - _LINE_UP.start, dtype=np.float32)
    out[[INSTRUMENT_INDEX[name] for name in names]] = 1.0
    out.flags.writeable = False
    return out


def _angles(local: float | np.ndarray) -> tuple[float | np.ndarray, float | np.ndarray]:
    """(hour of day, day of week) as angles of the local time ``local`` (seconds; a number or an array of them)."""
    hour_angle = 2.0 * math.pi * (local % 86400.0) / 86400.0
    # 1970-01-01 was a Thursday: +3 makes Monday = 0.
    day_angle = 2.0 * math.pi * (((local // 86400.0) + 3) % 7 + (local % 86400.0) / 86400.0) / 7.0
    return hour_angle, day_angle


def _time_columns(ts: Sequence[float], offsets: Sequence[int], previous_ts: float | None) -> np.ndarray:
    """The ``TIME`` columns of events at ``ts`` (the one before at ``previous_ts``), float64 ``[len(ts), 5]``.

    The angles and gaps are computed for all events at once (the same float64 operations as ``encode``'s); the
    sines, cosines and logarithms are ``math``'s, one call per event like ``encode``'s, as numpy's may differ in the
    last bit.
    """
    utc = np.array(ts, dtype=np.float64)
    hour_angle, day_angle = _angles(utc + 60.0 * np.array(offsets, dtype=np.float64))
    gap = np.empty_like(utc)
    gap[0] = 0.0 if previous_ts is None else utc[0] - previous_ts
    np.subtract(utc[1:], utc[:-1], out=gap[1:])
    gap_hours = np.maximum(gap, 0.0) / 3600.0
    columns = np.empty((len(ts), TIME.stop - TIME.start), dtype=np.float64)
    for column, (function, values) in enumerate(((math.sin, hour_angle), (math.cos, hour_angle), (math.sin, day_angle),
                                                 (math.cos, day_angle), (math.log1p, gap_hours))):
        columns[:, column] = np.fromiter(map(function, values.tolist()), np.float64, len(ts))
    columns[:, -1] /= _GAP_SCALE
    return columns


def _after_keep(recent: np.ndarray, genre: int, out: np.ndarray | None = None) -> np.ndarray:
    """The ``RECENT`` counts after a kept segment of ``genre``, written into ``out`` (a new array if none)."""
    out = np.multiply(recent, np.float32(RECENT_DECAY), out=out)
    out[genre] += 1.0
    return out
