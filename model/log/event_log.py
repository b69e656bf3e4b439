"""Reading and writing behaviour logs in JSON Lines, one event per line (see README "Behaviour log format").

Reading is line by line with a byte limit per line, so one corrupted or hostile line can neither exhaust memory nor
hide the good events around it: with ``on_error="skip"`` every bad line becomes an ``EventError`` in the report and
loading continues. Validation of a single event lives in ``model.log.parsing``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from model.log.events import Event
from model.log.log_file import open_log_lines
from model.log.parsing import EventError, event_to_json_line, parse_event
from model.log.time_rules import Moment, moment_of, time_error
from storage.atomic import atomic_write

MAX_LINE_BYTES = 8192
"""Longest accepted line in UTF-8 bytes, without its newline. Room for a 2000-character prompt even of 4-byte
characters (emoji); ``write_events`` refuses to write a longer line (a prompt full of JSON-escaped control
characters)."""

OnError = Literal["raise", "skip"]
_JSON_WHITESPACE = b" \t\r\n"
_BLANK = object()  # what _decode_line returns for a blank line (``None`` is the valid JSON value null)


@dataclass
class LoadReport:
    """What a load produced: the good events in file order, one error per skipped line, and the lines seen.

    Attributes:
        events: the accepted events, oldest first.
        errors: one ``EventError`` per rejected line, with ``line`` and ``source`` set.
        lines_read: physical lines seen, including blank ones.
    """

    events: list[Event]
    errors: list[EventError]
    lines_read: int

    @property
    def skipped(self) -> int:
        """Number of rejected lines (blank lines are not counted)."""
        return len(self.errors)

    def summary(self) -> str:
        """One line for logs, e.g. "412 events loaded, 1 line skipped (first: log.jsonl:17: ...)"."""
        text = f"{_plural(len(self.events), 'event')} loaded, {_plural(self.skipped, 'line')} skipped"
        return text + (f" (first: {self.errors[0]})" if self.errors else "")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _check_options(on_error: str, max_line_bytes: int) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip'. Found {on_error!r}.")
    if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int) or max_line_bytes < 1:
        raise ValueError(f"max_line_bytes must be a positive integer. Found {max_line_bytes!r}.")


def _decode_line(raw: bytes | str, max_line_bytes: int) -> object:
    """One line -> the decoded JSON value, or ``_BLANK`` for a blank line. Raises EventError without location."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    data = data[:-1] if data.endswith(b"\n") else data
    if len(data) > max_line_bytes:
        raise EventError(f"line is {max_line_bytes + 1}+ bytes; the limit is {max_line_bytes}.", value=data[:100])
    if not data.strip(_JSON_WHITESPACE):
        return _BLANK
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"line must be valid UTF-8 ({exc.reason} at byte {exc.start}).", value=data) from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except EventError:
        raise
    except json.JSONDecodeError as exc:
        raise EventError(f"line must be valid JSON ({exc.msg} at column {exc.colno}).", value=text) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of over 4300 digits, or [[[[... nested too deep
        raise EventError(f"line must be valid JSON within Python's limits ({exc}).", value=text) from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object as a dict, refusing a repeated key: ``json.loads`` would keep the last value silently."""
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise EventError("a key must appear only once in an event; this one appears more than once (which value "
                             "was meant is unknown, so the line is refused).", field=key, value=value)
        obj[key] = value
    return obj


def parse_lines(lines: Iterable[bytes | str], *, source: str = "<input>", on_error: OnError = "raise",
                max_line_bytes: int = MAX_LINE_BYTES, now: float | None = None) -> LoadReport:
    """Validate JSON Lines from any iterable (a file, a list, rows of a database), one event per line.

    Blank or whitespace-only lines are skipped silently (they are not errors), since editors and ``cat`` often leave
    them. A line may end with one ``\\n``; its length is counted in UTF-8 bytes without that newline.

    Args:
        lines: one item per physical line; line numbers count every item from 1.
        source: name shown in errors, e.g. the file name.
        on_error: "raise" stops at the first bad line; "skip" records it in ``errors`` and continues.
        max_line_bytes: longer lines are rejected without being decoded.
        now: the reading time (UTC seconds): an event more than ``model.log.time_rules.FUTURE_TOLERANCE_S`` after it is
            rejected on its own line. None skips that rule.

    Returns:
        The report of accepted events and skipped lines.

    Raises:
        EventError: in "raise" mode, for the first bad line, with ``line`` and ``source`` set.
        ValueError: if ``on_error`` or ``max_line_bytes`` is invalid.
    """
    _check_options(on_error, max_line_bytes)
    report = LoadReport(events=[], errors=[], lines_read=0)
    previous: Moment | None = None
    for number, raw in enumerate(lines, start=1):
        report.lines_read = number
        try:
            obj = _decode_line(raw, max_line_bytes)
            if obj is _BLANK:
                continue
            event = parse_event(obj)
            error = time_error(event, previous, "the previous event", now=now, shown=obj["time"])
            if error is not None:
                raise error
        except EventError as exc:
            located = exc.with_location(line=number, source=source)
            if on_error == "raise":
                raise located from None
            report.errors.append(located)
            continue
        report.events.append(event)
        previous = moment_of(event)
    return report


def load_events(path: str | os.PathLike[str], *, on_error: OnError = "raise",
                max_line_bytes: int = MAX_LINE_BYTES, now: float | None = None) -> LoadReport:
    """Load a behaviour log written in JSON Lines; see ``parse_lines`` for the rules and the two error modes.

    A leading UTF-8 byte order mark is skipped. Events far in the future are refused against ``now``, the current
    time unless given.

    Raises:
        EventError: in "raise" mode, for the first bad line, with the line number and file name.
        LogFileError: if the file is UTF-16/UTF-32 or its lines end in CR alone (before any line is read).
        OSError: if the file cannot be read.
    """
    _check_options(on_error, max_line_bytes)
    with open_log_lines(path, max_line_bytes) as lines:
        return parse_lines(lines, source=str(path), on_error=on_error, max_line_bytes=max_line_bytes,
                           now=time.time() if now is None else now)


def _checked_line(event: Event, previous: Moment | None) -> str:
    """The JSON line for ``event`` if it would load back after ``previous``; raises EventError without location."""
    line = event_to_json_line(event)
    error = time_error(event, previous, "the previous event")
    if error is not None:
        raise error
    size = len(line.encode("utf-8"))
    if size > MAX_LINE_BYTES:  # possible only for prompts full of characters JSON escapes, such as "\x00"
        raise EventError(f"the event's line would be {size} bytes; the limit is {MAX_LINE_BYTES}.", value=line)
    return line


def write_events(path: str | os.PathLike[str], events: Iterable[Event]) -> int:
    """Write ``events`` as JSON Lines, replacing ``path`` atomically; return how many were written.

    The lines go to a temporary file in the same directory, which is flushed to disk and then renamed over ``path``
    (``os.replace``), so readers see the old log or the new one, never half of one. Each event is checked by the
    loader's rules (``parse_event``, time order, ``MAX_LINE_BYTES``), so every file written here loads back (but
    for events more than ``model.log.time_rules.FUTURE_TOLERANCE_S`` after the time of loading: a synthetic log may lie
    in the future); on any error ``path`` is left untouched. The file ends up readable by its owner only (0600, ``storage.atomic``), as a
    log holds the user's private prompts.

    Raises:
        EventError: for the first event that breaks a rule, with its would-be line number and ``path``.
    """
    target = Path(path)
    count, previous = 0, None
    with atomic_write(target, "w", encoding="utf-8", newline="\n") as out:
        for count, event in enumerate(events, start=1):
            try:
                out.write(_checked_line(event, previous) + "\n")
            except EventError as exc:
                raise exc.with_location(line=count, source=str(path)) from None
            previous = moment_of(event)
    return count
