"""Strict validation of one behaviour event, from a decoded JSON object to an ``Event`` and back.

Every rule is checked here and nowhere else, so the loader, the writer and any later importer agree on what a valid
event is. Nothing is coerced: a string "96" is not a BPM, 1 is not ``true``, "Jazz" is not a genre. Each failure is
an ``EventError`` naming the field, the value found and the rule, so a user can fix the log by hand.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime

from model.log.events import FIELDS_BY_KIND, Event
from model.log.vocab import BPM_DIRECTIONS, BPM_MAX, BPM_MIN, EVENT_KINDS, GENRES, INSTRUMENTS

MAX_PROMPT_CHARS = 2000
MIN_YEAR, MAX_YEAR = 2000, 2099
_MAX_VALUE_CHARS = 80
_EXAMPLE_TIME = "2026-11-02T21:14:05+01:00"
_TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(Z|[+-]\d\d:\d\d)?", re.ASCII)
_PAYLOAD_FIELDS = ("genre", "bpm", "direction", "instrument", "enabled", "instruments", "prompt")


class _Missing:
    """Type of ``MISSING``: the value of a field that is absent, or of an error about no value in particular."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


class EventError(ValueError):
    """An event (or a line holding one) breaks a rule of the behaviour log format.

    Attributes:
        field: the offending field, or ``None`` when the problem is the whole object or line.
        value: the value found (``MISSING`` when the field is absent or no single value is at fault).
        rule: a sentence stating the rule that was broken.
        line: 1-based line number in ``source``, when known.
        source: the file (or other input) name, when known.
    """

    def __init__(self, rule: str, *, field: str | None = None, value: object = MISSING,
                 line: int | None = None, source: str | None = None) -> None:
        self.rule, self.field, self.value, self.line, self.source = rule, field, value, line, source
        super().__init__(self._message())

    def with_location(self, *, line: int | None = None, source: str | None = None) -> EventError:
        """A copy of this error that says where it happened (keeps the current line/source when not given)."""
        return EventError(self.rule, field=self.field, value=self.value,
                          line=self.line if line is None else line, source=self.source if source is None else source)

    def __reduce__(self):
        # Keyword-only arguments: default exception pickling would call EventError(message) and lose the fields.
        return (_rebuild_error, (self.rule, self.field, self.value, self.line, self.source))

    def _message(self) -> str:
        where = ":".join(str(p) for p in (self.source, self.line) if p is not None)
        shown = _short_repr(self.value)
        if self.field is None:
            what = "" if self.value is MISSING else f"value {shown}: "
        else:
            what = f"field {self.field!r} " + ("is missing: " if self.value is MISSING else f"= {shown}: ")
        return (f"{where}: " if where else "") + what + self.rule


def _rebuild_error(rule, field, value, line, source) -> EventError:
    return EventError(rule, field=field, value=value, line=line, source=source)


def _short_repr(value: object) -> str:
    """``repr(value)`` cut to about 80 characters, so a huge or hostile value cannot flood a message."""
    try:
        text = repr(value)
    except RecursionError:  # json.loads accepts nesting a little deeper than repr can print from here
        return "<value nested too deeply to show>"
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."


def _case_hint(value: object, allowed: tuple[str, ...]) -> str:
    """A "Did you mean 'jazz'?" suffix when ``value`` differs from an allowed name only by case; else empty."""
    return f" Did you mean {value.lower()!r}?" if isinstance(value, str) and value.lower() in allowed else ""


def _one_of(field: str, value: object, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is exactly one of ``allowed`` (case-sensitive); otherwise raise."""
    if isinstance(value, str) and value in allowed:
        return value
    rule = f"{field} must be one of: {', '.join(allowed)}.{_case_hint(value, allowed)}"
    raise EventError(rule, field=field, value=value)


def parse_time(value: object) -> tuple[float, int]:
    """ISO 8601 time with explicit offset -> (UTC epoch seconds, offset in minutes); raises EventError."""
    shape = f"time must be an ISO 8601 string YYYY-MM-DDTHH:MM:SS[.ffffff] with a UTC offset, e.g. {_EXAMPLE_TIME!r}."
    if not isinstance(value, str):
        raise EventError(shape, field="time", value=value)
    match = _TIME_RE.fullmatch(value)
    if match is None:
        raise EventError(shape, field="time", value=value)
    if match.group(1) is None:
        raise EventError(f"time needs an explicit UTC offset ('Z' or +HH:MM/-HH:MM); add it, e.g. {_EXAMPLE_TIME!r}.",
                         field="time", value=value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise EventError(f"time must be a real calendar date and clock time ({exc}).", field="time",
                         value=value) from None
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise EventError(f"time must be in the years {MIN_YEAR} to {MAX_YEAR}.", field="time", value=value)
    return moment.timestamp(), int(moment.utcoffset().total_seconds()) // 60


def _parse_bpm(value: object) -> float:
    rule = f"BPM must be a number between {BPM_MIN:g} and {BPM_MAX:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(f"{rule}, written as a JSON number (not a string or boolean).", field="bpm", value=value)
    if isinstance(value, float) and not math.isfinite(value):
        raise EventError(f"{rule}; NaN and Infinity are not allowed.", field="bpm", value=value)
    if not BPM_MIN <= value <= BPM_MAX:
        raise EventError(f"{rule}.", field="bpm", value=value)
    return float(value)


def _parse_enabled(value: object) -> bool:
    if not isinstance(value, bool):
        raise EventError("enabled must be true or false (a JSON boolean, not 0/1 or a string).",
                         field="enabled", value=value)
    return value


def _parse_instruments(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise EventError("instruments must be a JSON array of instrument names (it may be empty).",
                         field="instruments", value=value)
    seen: set[str] = set()
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in INSTRUMENTS:
            raise EventError(f"instruments[{i}] = {_short_repr(name)} is not an instrument; each must be one of: "
                             f"{', '.join(INSTRUMENTS)}.{_case_hint(name, INSTRUMENTS)}",
                             field="instruments", value=value)
        if name in seen:
            raise EventError(f"instruments must not repeat an instrument; {name!r} appears more than once.",
                             field="instruments", value=value)
        seen.add(name)
    return tuple(value)


def _parse_prompt(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
        found = f" (found {len(value)})" if isinstance(value, str) else ""
        raise EventError(f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters{found}.",
                         field="prompt", value=value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON can spell a lone surrogate ("\ud800"); UTF-8 cannot store it
        raise EventError(f"prompt must be valid Unicode text; it has an unpaired surrogate at character {exc.start}.",
                         field="prompt", value=value) from None
    return value


_FIELD_PARSERS = {
    "genre": lambda v: _one_of("genre", v, GENRES),
    "bpm": _parse_bpm,
    "direction": lambda v: _one_of("direction", v, BPM_DIRECTIONS),
    "instrument": lambda v: _one_of("instrument", v, INSTRUMENTS),
    "enabled": _parse_enabled,
    "instruments": _parse_instruments,
    "prompt": _parse_prompt,
}


def parse_event(obj: object) -> Event:
    """Validate one decoded JSON object and build the ``Event`` it describes.

    Args:
        obj: the result of ``json.loads`` on one line.

    Returns:
        The event, with ``time`` split into UTC seconds and the local offset in minutes.

    Raises:
        EventError: on the first broken rule (checked in order: object, kind, time, unknown fields, missing fields,
            field values), naming the field, the value and the rule. ``line``/``source`` are left for the caller.
    """
    if not isinstance(obj, dict):
        raise EventError("an event must be a JSON object ({...}).", value=obj)
    if "kind" not in obj:
        raise EventError(f"every event needs a kind, one of: {', '.join(EVENT_KINDS)}.", field="kind")
    kind = _one_of("kind", obj["kind"], EVENT_KINDS)
    if "time" not in obj:
        raise EventError(f"every event needs a time, e.g. {_EXAMPLE_TIME!r}.", field="time")
    ts, offset = parse_time(obj["time"])
    required = FIELDS_BY_KIND[kind]
    allowed = ("time", "kind", *required)
    for name in obj:
        if name not in allowed:
            raise EventError(f"only these fields are allowed for kind {kind!r}: {', '.join(allowed)}.",
                             field=str(name), value=obj[name])
    for name in required:
        if name not in obj:
            raise EventError(f"kind {kind!r} requires the fields {', '.join(required)}.", field=name)
    values = {name: _FIELD_PARSERS[name](obj[name]) for name in required}
    return Event(ts=ts, utc_offset_min=offset, kind=kind, **values)


def event_to_json_line(event: Event) -> str:
    """One compact JSON line (no newline) for ``event``; ``parse_event(json.loads(line)) == event``.

    The event is checked against the same rules as ``parse_event`` first, so a written line always loads back.
    Whole-number BPMs are written as integers (``96``, not ``96.0``) to match hand-written logs.

    Raises:
        EventError: if the event breaks a rule, e.g. a BPM out of range, a payload field its kind does not use, or a
            ``utc_offset_min`` that is not an ``int``.
    """
    _one_of("kind", event.kind, EVENT_KINDS)
    for name in _PAYLOAD_FIELDS:
        if name not in FIELDS_BY_KIND[event.kind] and getattr(event, name) is not None:
            raise EventError(f"field {name!r} must be None for kind {event.kind!r}.", field=name,
                             value=getattr(event, name))
    if isinstance(event.utc_offset_min, bool) or not isinstance(event.utc_offset_min, int):
        # timedelta would round a float to the microsecond (60.0000000001 -> 60) and the event would read back altered
        raise EventError("utc_offset_min must be an int number of minutes, e.g. 60 for +01:00; a float (even 60.0) "
                         "or a bool is refused, so an offset is never rounded.", field="utc_offset_min",
                         value=event.utc_offset_min)
    try:
        obj = event.to_json_dict()
    except (ValueError, OverflowError, OSError, TypeError) as exc:
        raise EventError(f"ts and utc_offset_min must give a representable local time ({exc}).", field="ts",
                         value=(event.ts, event.utc_offset_min)) from exc
    parse_event(obj)
    if isinstance(obj.get("bpm"), float) and obj["bpm"].is_integer():
        obj["bpm"] = int(obj["bpm"])
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
