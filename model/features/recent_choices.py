"""The user's recent tempo and instrument choices, read from their latest events.

The LSTM predicts genres; the tempo and instrumentation a user has been choosing lately come straight from the log
(SEED.md's example: "last week 70% slow tempo + acoustic guitar + ambient sound"). Recent events count more: the
``k``-th most recent event has weight ``decay**k``. Prompts are never read.

Tempo: weighted mean of the tempos the user set (``bpm_set``, weight x2: an explicit choice) and of the segments
they kept. Instruments: +1 for each instrument of a kept segment, +2 for switching one on and -2 for switching it
off; the instruments with a positive score, strongest first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from model.log.events import Event
from model.log.vocab import INSTRUMENTS

SET_BPM_WEIGHT = 2.0
TOGGLE_WEIGHT = 2.0


@dataclass(frozen=True)
class RecentChoices:
    """Attributes:
    bpm: the user's recent tempo, or ``None`` when no recent event carries one.
    instruments: instruments the user recently kept or switched on, strongest first (at most ``max_instruments``).
    """

    bpm: float | None = None
    instruments: tuple[str, ...] = ()


def summarise_recent(events: Sequence[Event], *, max_events: int = 60, decay: float = 0.95,
                     max_instruments: int = 4) -> RecentChoices:
    """Tempo and instruments of the last ``max_events`` events (rules in the module docstring)."""
    if max_events < 1 or max_instruments < 0:
        raise ValueError(f"max_events must be >= 1 and max_instruments >= 0. Found {max_events}, {max_instruments}.")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1]. Found {decay}.")
    bpm_sum = bpm_weight = 0.0
    scores = dict.fromkeys(INSTRUMENTS, 0.0)
    for age, event in enumerate(reversed(events[-max_events:])):
        weight = decay**age
        if event.kind == "bpm_set" and event.bpm is not None:
            bpm_sum += SET_BPM_WEIGHT * weight * event.bpm
            bpm_weight += SET_BPM_WEIGHT * weight
        elif event.kind == "segment_kept":
            if event.bpm is not None:
                bpm_sum += weight * event.bpm
                bpm_weight += weight
            for name in event.instruments or ():
                scores[name] += weight
        elif event.kind == "instrument_toggled" and event.instrument is not None:
            scores[event.instrument] += (TOGGLE_WEIGHT if event.enabled else -TOGGLE_WEIGHT) * weight
    liked = sorted((name for name, score in scores.items() if score > 0.0), key=lambda name: -scores[name])
    return RecentChoices(
        bpm=bpm_sum / bpm_weight if bpm_weight > 0.0 else None,
        instruments=tuple(liked[:max_instruments]),
    )
