"""The behaviour event: the data contract of the whole system.

One event is one thing a user did in the music app. Events are stored one per line as JSON (JSON Lines); see
README "Behaviour log format". Time is kept as UTC seconds plus the user's local UTC offset, because the model
needs local hour and weekday (daily and weekly rhythm) and ordering needs an absolute clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

FIELDS_BY_KIND: dict[str, tuple[str, ...]] = {
    "style_chosen": ("genre",),
    "bpm_set": ("bpm", "direction"),
    "instrument_toggled": ("instrument", "enabled"),
    "segment_kept": ("genre", "bpm", "instruments"),
    "segment_redone": ("genre", "bpm", "instruments"),
    "generation_requested": ("prompt",),
}
"""Fields each kind requires besides ``time`` and ``kind``; no other fields are allowed for that kind."""


@dataclass(frozen=True, slots=True)
class Event:
    """One validated behaviour event. Fields not used by ``kind`` are ``None``.

    Attributes:
        ts: UTC time in seconds since the Unix epoch.
        utc_offset_min: the user's local offset from UTC in minutes at that moment (e.g. +60 for CET).
        kind: one of ``model.log.vocab.EVENT_KINDS``.
        genre: one of ``model.log.vocab.GENRES`` (style_chosen, segment_kept, segment_redone).
        bpm: tempo in beats per minute, 20-300 (bpm_set, segment_*).
        direction: "up" or "down": the way the user moved the tempo (bpm_set).
        instrument: one of ``model.log.vocab.INSTRUMENTS`` (instrument_toggled).
        enabled: True when switched on, False when switched off (instrument_toggled).
        instruments: the instruments of a generated segment, a tuple without duplicates (segment_*).
        prompt: free text the user typed (generation_requested). Never leaves the device.
    """

    ts: float
    utc_offset_min: int
    kind: str
    genre: str | None = None
    bpm: float | None = None
    direction: str | None = None
    instrument: str | None = None
    enabled: bool | None = None
    instruments: tuple[str, ...] | None = None
    prompt: str | None = None

    @property
    def local_time(self) -> datetime:
        """The event's wall-clock time in the user's own time zone."""
        tz = timezone(timedelta(minutes=self.utc_offset_min))
        return datetime.fromtimestamp(self.ts, tz=tz)

    def to_json_dict(self) -> dict:
        """The JSON Lines representation (inverse of ``model.log.parsing.parse_event``)."""
        out: dict = {"time": self.local_time.isoformat(), "kind": self.kind}
        for name in FIELDS_BY_KIND[self.kind]:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out
