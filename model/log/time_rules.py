"""The time rules of a behaviour log, in one place for the loader, the writer and the log store.

Two rules: time never goes backwards (each event is at or after the previously accepted one, compared in UTC), and
when reading what a device recorded, no event lies more than ``FUTURE_TOLERANCE_S`` after the reading time. The
second rule exists because one event from a clock set to 2099 would otherwise make every later event "earlier than
the previous one": such an event is rejected on its own line and does not become the reference for the next line.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from model.log.events import Event
from model.log.parsing import EventError

FUTURE_TOLERANCE_S = 24 * 3600.0
"""How far after the reading time an event may lie: a day covers any time-zone slip and clock drift, while a
mistyped year or a device clock set years ahead is refused."""

Moment = tuple[float, int]
"""(UTC seconds, UTC offset in minutes) of an accepted event, enough to state it in its own local time."""


def local_iso(moment: Moment) -> str:
    """The moment as ISO 8601 in its own local time, e.g. 2026-11-02T21:14:05+01:00."""
    ts, offset = moment
    return datetime.fromtimestamp(ts, tz=timezone(timedelta(minutes=offset))).isoformat()


def moment_of(event: Event) -> Moment:
    """The (UTC seconds, offset) pair ``time_error`` compares against."""
    return event.ts, event.utc_offset_min


def time_error(event: Event, previous: Moment | None, where: str, *, now: float | None = None,
               shown: object = None) -> EventError | None:
    """An error if ``event`` breaks a time rule, else None; an equal time is fine.

    Args:
        event: the event being accepted.
        previous: the last accepted event's moment, or None for the first one.
        where: how the error names ``previous``, e.g. "the previous event" or "the store's last event".
        now: the reading time in UTC seconds; None skips the future rule (events being recorded, synthetic logs).
        shown: the time as the input wrote it (defaults to the event's local ISO time).
    """
    value = event.local_time.isoformat() if shown is None else shown
    if now is not None and event.ts > now + FUTURE_TOLERANCE_S:
        read_at = local_iso((float(int(now)), 0))
        return EventError(f"time must be at most {FUTURE_TOLERANCE_S / 3600:g} hours after the time of reading "
                          f"({read_at}); an event further in the future comes from a wrong device clock or a typo, "
                          "and is refused so that it cannot hide the events after it.", field="time", value=value)
    if previous is None or event.ts >= previous[0]:
        return None
    return EventError(f"time must not go backwards; {where} is at {local_iso(previous)}.", field="time", value=value)
