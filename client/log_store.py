"""The device's behaviour log: an append-only SQLite file of validated events, kept in the device's private storage.

The one deletion is ``drop_after``, the repair for an event from a device clock set far ahead. Imports are
idempotent: events already stored are recognised and counted, not stored twice.

Each row keeps the event's canonical JSON line (``model.log.parsing.event_to_json_line``), so the event contract
has one definition; ``ts``, ``utc_offset_min`` and ``kind`` are copies for querying. Reading re-parses every line
with ``parse_event``, and a row that no longer parses (invalid UTF-8 included) is reported, never silently dropped.
Opening the file, its schema checks and SQLite's failures (a damaged file is ``LogStoreError``) are in
``client.log_store_file``.

Durability: WAL journal with ``synchronous=FULL``, one transaction per append. Every commit fsyncs the WAL, so an
append that has returned survives a killed process, and an OS crash or power cut as far as the disk honours fsync;
a crash mid-append loses that event only. (NORMAL would be corruption-safe in WAL mode too, but a power cut could
roll back the last commits; appends are human-paced, so the ~ms fsync per event is cheap.) Several processes may open the same file: WAL lets readers run
beside the one writer, writers wait up to ``BUSY_TIMEOUT_S`` for each other, and each write transaction is
``BEGIN IMMEDIATE`` so the time-order check and the insert see the same last event.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, Self

from client.log_store_file import (
    APPLICATION_ID,
    BUSY_TIMEOUT_S,
    SCHEMA_VERSION,
    LogStoreError,
    connect,
    sqlite_errors,
    undecodable,
)
from client.log_import import PROGRESS_LINES, ImportReport, canonical, new_in_time_order, parse_log_file
from model.log.event_log import LoadReport
from model.log.events import Event
from model.log.parsing import EventError, parse_event
from model.log.time_rules import Moment, moment_of, time_error
from model.log.vocab import EVENT_KINDS, GENRES

__all__ = ["APPLICATION_ID", "BUSY_TIMEOUT_S", "PROGRESS_LINES", "SCHEMA_VERSION", "ImportReport", "LogStore",
           "LogStoreError", "log_stats"]

_INSERT = "INSERT INTO events (ts, utc_offset_min, kind, json_line) VALUES (?, ?, ?, ?)"


class LogStore:
    """Append-only store of one device's behaviour events. Open with ``LogStore.open(path)``; use as ``with``."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        """Wrap an already checked connection; call ``LogStore.open`` instead."""
        self._conn, self.path = connection, path

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> LogStore:
        """Open the store at ``path``, creating it (parent folders too, file mode 0600) when missing and ``create``.

        Raises:
            LogStoreError: if ``path`` is a folder, is missing or empty and not ``create``, cannot be created, or is
                not a log store of schema ``SCHEMA_VERSION``; the file is then left unchanged.
        """
        path = Path(path)
        return cls(connect(path, create=create), path)

    def close(self) -> None:
        """Close the connection; the data is already on disk after every append."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction, committed on success and rolled back on any exception; a damaged file is LogStoreError."""
        with sqlite_errors(self.path):
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _last(self) -> Moment | None:
        return self._conn.execute("SELECT ts, utc_offset_min FROM events ORDER BY id DESC LIMIT 1").fetchone()

    def append(self, event: Event) -> Event:
        """Store one event durably and return it as it reads back (its time rounded to microseconds).

        Raises:
            EventError: if the event breaks a rule of the log format or is earlier than the last stored event.
            TypeError: if ``event`` is not an ``Event``.
        """
        stored, line = canonical(event)
        with self._transaction() as conn:
            error = time_error(stored, self._last(), "the store's last event")
            if error is not None:
                raise error
            conn.execute(_INSERT, (stored.ts, stored.utc_offset_min, stored.kind, line))
        return stored

    def append_many(self, events: Iterable[Event]) -> list[Event]:
        """Store several events in one transaction: all of them, or none if any is rejected.

        Raises:
            EventError: for the first event (named "event i of the batch", from 1) that ``append`` would reject.
        """
        rows: list[tuple[Event, str]] = []
        for i, event in enumerate(events, start=1):
            try:
                rows.append(canonical(event))
            except EventError as exc:
                raise exc.with_location(source=f"event {i} of the batch") from None
        with self._transaction() as conn:
            previous, where = self._last(), "the store's last event"
            for i, (stored, _) in enumerate(rows, start=1):
                error = time_error(stored, previous, where)
                if error is not None:
                    raise error.with_location(source=f"event {i} of the batch")
                previous, where = moment_of(stored), f"event {i} of the batch"
            conn.executemany(_INSERT, [(e.ts, e.utc_offset_min, e.kind, line) for e, line in rows])
        return [stored for stored, _ in rows]

    def read(self, since_ts: float | None = None) -> LoadReport:
        """Every readable event (``ts >= since_ts`` when given) in insertion order, and one error per bad row.

        ``errors`` name the row, e.g. "events.db, row 17: field 'bpm' = 500: ..."; ``lines_read`` counts rows. A row
        of invalid UTF-8 or of values of the wrong type (damage, an edit by hand) is one such error.

        Raises:
            LogStoreError: if the file is damaged past reading its rows.
        """
        if since_ts is None:
            query, parameters = "SELECT id, ts, kind, json_line FROM events ORDER BY id", ()
        else:
            if isinstance(since_ts, bool) or not isinstance(since_ts, (int, float)) or not math.isfinite(since_ts):
                raise ValueError(f"since_ts must be a finite number of UTC seconds or None. Found {since_ts!r}.")
            query, parameters = "SELECT id, ts, kind, json_line FROM events WHERE ts >= ? ORDER BY id", (since_ts,)
        with sqlite_errors(self.path):
            rows = self._conn.execute(query, parameters).fetchall()
        report = LoadReport(events=[], errors=[], lines_read=len(rows))
        for row_id, ts, kind, line in rows:
            try:
                report.events.append(_row_event(ts, kind, line))
            except EventError as exc:
                report.errors.append(EventError(exc.rule, field=exc.field, value=exc.value,
                                                source=f"{self.path}, row {row_id}"))
        return report

    def events(self, since_ts: float | None = None) -> list[Event]:
        """The stored events (``ts >= since_ts`` when given), oldest first.

        Raises:
            EventError: for the first row that no longer parses; ``read`` returns the good rows and every error.
        """
        report = self.read(since_ts)
        if report.errors:
            raise report.errors[0]
        return report.events

    def count(self) -> int:
        """Number of stored rows."""
        with sqlite_errors(self.path):
            return self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def stats(self) -> dict:
        """A JSON-ready summary: see ``log_stats``; ``unreadable_rows`` counts rows that no longer parse."""
        report = self.read()
        return log_stats(report.events) | {"unreadable_rows": report.skipped}

    def drop_after(self, ts: float, *, dry_run: bool = False) -> int:
        """Delete every event later than ``ts`` (UTC seconds); return how many there were (deleted unless dry run).

        The one repair of an append-only log: an event from a device clock set years ahead makes every later
        event "earlier than the store's last event", so no import or append could succeed again.
        """
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            raise ValueError(f"ts must be a finite number of UTC seconds. Found {ts!r}.")
        with self._transaction(write=not dry_run) as conn:
            count = conn.execute("SELECT COUNT(*) FROM events WHERE ts > ?", (ts,)).fetchone()[0]
            if not dry_run:
                conn.execute("DELETE FROM events WHERE ts > ?", (ts,))
        return count

    def import_jsonl(self, path: str | os.PathLike[str], *, on_error: Literal["skip", "raise"] = "skip",
                     dry_run: bool = False, now: float | None = None,
                     progress: Callable[[int], None] | None = None) -> ImportReport:
        """Validate a JSON Lines log and append its new events in one transaction; importing is idempotent.

        A line whose event the store already holds (same time and content, up to the store's last event) is counted
        in ``already_present``, not stored again, so importing a log twice, or again after it grew, appends only the
        new lines. Any other line is rejected if ``model.log.event_log.parse_lines`` rejects it (an event more than
        ``model.log.time_rules.FUTURE_TOLERANCE_S`` after ``now`` included), or if it is earlier than the previous
        accepted event (the store's last event, for the first). Lines are read with ``MAX_LINE_BYTES`` as limit and
        parsed before the write lock is taken, so importing a long file does not block the app's appends.

        Args:
            path: the JSON Lines file (UTF-8; a leading byte order mark is skipped).
            on_error: "skip" stores the good lines and reports the bad ones; "raise" stores nothing if any is bad.
            dry_run: check everything, including against the store's last event, but store nothing.
            now: the time of reading in UTC seconds; the current time if None.
            progress: called with the number of lines read after every ``PROGRESS_LINES`` lines.

        Raises:
            EventError: in "raise" mode, for the first bad line (lowest line number), with ``line`` and ``source``.
            LogFileError: if the file is UTF-16/UTF-32 or its lines end in CR alone; nothing is stored.
            OSError: if the file cannot be read.
        """
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise'. Found {on_error!r}.")
        parsed, errors, lines_read = parse_log_file(path, time.time() if now is None else now, progress)
        if errors and on_error == "raise":
            raise errors[0]
        with self._transaction(write=not dry_run) as conn:
            last = self._last()
            stored = self._lines_up_to(last, parsed)
            accepted, present, late = new_in_time_order(parsed, last, stored, str(path))
            errors = sorted(errors + late, key=lambda exc: exc.line)
            if errors and on_error == "raise":
                raise errors[0]
            if not dry_run:
                conn.executemany(_INSERT, [(e.ts, e.utc_offset_min, e.kind, line) for e, line in accepted])
        return ImportReport(events=len(accepted), errors=errors, lines_read=lines_read, stored=not dry_run,
                            already_present=present)

    def _lines_up_to(self, last: Moment | None, parsed: list[tuple[int, Event, str]]) -> Counter[str]:
        """The stored lines an import of ``parsed`` may repeat: those from its earliest event to the last one."""
        earliest = min((event.ts for _, event, _ in parsed), default=None)
        if last is None or earliest is None or earliest > last[0]:
            return Counter()
        rows = self._conn.execute("SELECT json_line FROM events WHERE ts >= ?", (earliest,))
        return Counter(line for line, in rows)


def _row_event(ts: object, kind: object, line: object) -> Event:
    """Re-parse one stored row; raises EventError if the line breaks a rule or disagrees with its columns."""
    for name, value in (("json_line", line), ("kind", kind)):
        at = undecodable(value) if isinstance(value, str) else None
        if at is not None:
            raise EventError(f"the row's {name} column must be valid UTF-8, but its character {at} is the byte "
                             f"{ord(value[at]) - 0xDC00:#04x}, which is not (the file was damaged or edited by hand).",
                             field=name, value=value)
    try:
        obj = json.loads(line)
    except (TypeError, ValueError, RecursionError) as exc:
        raise EventError(f"the stored line must be valid JSON ({exc}).", value=line) from None
    event = parse_event(obj)
    if (event.ts, event.kind) != (ts, kind):
        raise EventError("the row's ts and kind columns must match its JSON line (was the file edited by hand?).",
                         value=(ts, kind))
    return event


def log_stats(events: list[Event]) -> dict:
    """Counts per kind (every kind, zeros too), first and last local time, and kept-genre counts (every genre)."""
    per_kind = dict.fromkeys(EVENT_KINDS, 0)
    kept = dict.fromkeys(GENRES, 0)
    for event in events:
        per_kind[event.kind] += 1
        if event.kind == "segment_kept":
            kept[event.genre] += 1
    return {
        "events": len(events),
        "per_kind": per_kind,
        "first_time": events[0].local_time.isoformat() if events else None,
        "last_time": events[-1].local_time.isoformat() if events else None,
        "kept_genres": kept,
    }
