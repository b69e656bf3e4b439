"""Importing a JSON Lines log into the log store: each line checked alone, then against what the store holds.

Split from ``client.log_store`` so the store keeps storing and reading. An import is idempotent: a line whose event
the store already holds (same time and canonical JSON line, up to the store's last event) is counted as already
present, not stored again and not an error, so a log imported twice, or again after it grew, adds only its new
lines. Any other line older than the previous accepted event breaks the time rule of ``model.log.time_rules``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from model.log.event_log import MAX_LINE_BYTES, parse_lines
from model.log.events import Event
from model.log.log_file import open_log_lines
from model.log.parsing import EventError, event_to_json_line, parse_event
from model.log.time_rules import Moment, moment_of, time_error

PROGRESS_LINES = 50_000
"""An import calls its ``progress`` callback after every this many lines read."""


@dataclass
class ImportReport:
    """What ``LogStore.import_jsonl`` did.

    Attributes:
        events: new valid events; all of them were stored unless ``stored`` is False.
        errors: one ``EventError`` per rejected line, in line order, with ``line`` and ``source`` set.
        lines_read: physical lines in the file, blank ones included.
        stored: False for a dry run.
        already_present: valid lines whose event the store already holds (a log imported again, or grown).
    """

    events: int
    errors: list[EventError]
    lines_read: int
    stored: bool
    already_present: int = 0

    @property
    def skipped(self) -> int:
        """Number of rejected lines (blank lines are not counted)."""
        return len(self.errors)

    def summary(self) -> str:
        """E.g. "imported 41 events, 3 already present, skipped 1 line" ("would import ..." for a dry run)."""
        verb = "imported" if self.stored else "would import"
        present = f", {self.already_present} already present" if self.already_present else ""
        return f"{verb} {_plural(self.events, 'event')}{present}, skipped {_plural(self.skipped, 'line')}"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def canonical(event: Event) -> tuple[Event, str]:
    """(the event as it will read back, its JSON line), checked by the loader's rules. Raises EventError."""
    if not isinstance(event, Event):
        raise TypeError(f"a log store holds model.log.events.Event objects. Found {type(event).__name__}.")
    line = event_to_json_line(event)
    size = len(line.encode("utf-8"))
    if size > MAX_LINE_BYTES:
        raise EventError(f"the event's line would be {size} bytes; the limit is {MAX_LINE_BYTES}.", value=line)
    return parse_event(json.loads(line)), line  # a sub-microsecond ts reads back rounded: store that value


def new_in_time_order(parsed: list[tuple[int, Event, str]], last: Moment | None, stored: Counter[str],
                       source: str) -> tuple[list[tuple[Event, str]], int, list[EventError]]:
    """Split parsed lines into new events that keep time order after the store's ``last``, already stored, errors.

    A line no later than ``last`` that equals a stored line (``stored`` counts them, and each is used up once) is
    already present; this also keeps repeated identical events of a file apart.
    """
    accepted: list[tuple[Event, str]] = []
    errors: list[EventError] = []
    present = 0
    previous, where = last, "the store's last event"
    for number, event, line in parsed:
        if last is not None and event.ts <= last[0] and stored[line]:
            stored[line] -= 1
            present += 1
            continue
        error = time_error(event, previous, where)
        if error is not None:
            errors.append(error.with_location(line=number, source=source))
            continue
        accepted.append((event, line))
        previous, where = moment_of(event), f"the event on line {number}"
    return accepted, present, errors


def parse_log_file(path: str | os.PathLike[str], now: float, progress: Callable[[int], None] | None,
                ) -> tuple[list[tuple[int, Event, str]], list[EventError], int]:
    """Each line checked alone by ``parse_lines``: ([(line number, event, canonical line)], errors, lines read)."""
    parsed: list[tuple[int, Event, str]] = []
    errors: list[EventError] = []
    number = 0
    with open_log_lines(path, MAX_LINE_BYTES) as lines:
        for number, raw in enumerate(lines, start=1):
            report = parse_lines([raw], source=str(path), on_error="skip", now=now)  # order is checked later
            errors.extend(exc.with_location(line=number) for exc in report.errors)
            for event in report.events:
                try:
                    parsed.append((number, *canonical(event)))
                except EventError as exc:  # canonical line over the limit, e.g. ".1Z" written as ".100000+00:00"
                    errors.append(exc.with_location(line=number, source=str(path)))
            if progress is not None and number % PROGRESS_LINES == 0:
                progress(number)
    return parsed, errors, number
