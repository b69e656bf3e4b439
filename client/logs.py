"""Command line for the device's log store: import a JSON Lines log, validate one, show what the store holds.

Run as ``python -m client.logs --help``. Exit codes: 0 all good, 1 some line or row was invalid (each is printed as
"file:line: field ... rule", the first ``SHOWN_ERRORS`` of them and then a count), 2 the command could not run at all
(missing or unreadable file, a file in UTF-16 or with CR-only line ends, a folder given as a file, a database that is
not a log store or is damaged); the reason is then one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path

from client.log_store import ImportReport, LogStore, LogStoreError
from model.log.event_log import MAX_LINE_BYTES, load_events
from model.log.log_file import LogFileError, open_log_lines
from model.log.parsing import EventError, parse_time

_PROG = "python -m client.logs"
SHOWN_ERRORS = 20
"""Bad lines printed one by one; the rest are counted, so a 100,000-line bad file prints a screenful, not 100,000."""
_FORMAT = argparse.RawDescriptionHelpFormatter


class _CannotRun(Exception):
    """The command cannot run at all (exit code 2); the message is the whole explanation."""


def _input_file(text: str) -> Path:
    """``text`` as a path to a readable regular file, or ``_CannotRun`` saying what it is instead."""
    path = Path(text)
    if path.is_dir():
        raise _CannotRun(f"{path} is a directory; give a JSON Lines file (one event per line).")
    if not path.exists():
        raise _CannotRun(f"{path}: no such file.")
    if not path.is_file():  # e.g. /dev/zero: one endless line, which reading past the line limit would never end
        raise _CannotRun(f"{path} is not a regular file (a device, pipe or socket); give a JSON Lines file "
                         "(one event per line), e.g. save the stream to a file first.")
    return path


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _report(errors: Sequence[EventError], summary: str) -> int:
    """Print the first bad lines as file:line: message, a count of the rest, then the one-line summary; return the
    exit code (1 if any line was bad)."""
    for error in errors[:SHOWN_ERRORS]:
        print(error)
    if len(errors) > SHOWN_ERRORS:
        print(f"... and {len(errors) - SHOWN_ERRORS} more bad lines ({len(errors)} in all; the first {SHOWN_ERRORS} "
              "shown)")
    print(summary)
    return 1 if errors else 0


def _progress(lines: int) -> None:
    print(f"read {lines:,} lines ...", file=sys.stderr, flush=True)


def run_import(args: argparse.Namespace) -> int:
    """Import FILE into the store at --db; print the bad lines and a summary."""
    path = _input_file(args.file)
    with open_log_lines(path, MAX_LINE_BYTES):  # unreadable or not UTF-8 lines: refuse before creating a store
        pass
    with LogStore.open(args.db) as store:
        report: ImportReport = store.import_jsonl(path, dry_run=args.strict, progress=_progress)
        if args.strict and not report.errors:
            try:  # raise mode: a line another process made "too old" since the dry run still stores nothing
                report = store.import_jsonl(path, on_error="raise")
            except EventError as exc:
                return _report([exc], f"imported 0 events (--strict: {path} has a bad line, so nothing was stored)")
    if args.strict and report.errors:
        return _report(report.errors, f"imported 0 events (--strict: {_plural(report.skipped, 'bad line')}, so "
                                      f"none of the {_plural(report.events, 'valid event')} was stored)")
    return _report(report.errors, report.summary())


def run_validate(args: argparse.Namespace) -> int:
    """Check FILE against the log format without storing anything."""
    path = _input_file(args.file)
    report = load_events(path, on_error="skip")
    return _report(report.errors,
                   f"{path}: {_plural(len(report.events), 'valid event')}, {_plural(report.skipped, 'invalid line')}")


def run_stats(args: argparse.Namespace) -> int:
    """Print what the store at --db holds, as text or (--json) as one JSON object."""
    with LogStore.open(args.db, create=False) as store:
        stats = store.stats()
        errors = store.read().errors if stats["unreadable_rows"] else []
    print(json.dumps(stats, indent=2) if args.json else _stats_text(args.db, stats))
    for error in errors:  # on stderr with --json, so stdout stays one JSON object
        print(error, file=sys.stderr if args.json else sys.stdout)
    return 1 if errors else 0


def run_drop(args: argparse.Namespace) -> int:
    """Delete (or with --dry-run count) the events later than --after: the repair for a wrong device clock."""
    try:
        after, _ = parse_time(args.after)
    except EventError as exc:
        raise _CannotRun(f"--after {args.after!r}: {exc.rule}") from None
    with LogStore.open(args.db, create=False) as store:
        later = [e for e in store.read(since_ts=after).events if e.ts > after]
        count = store.drop_after(after, dry_run=args.dry_run)
    verb = "would drop" if args.dry_run else "dropped"
    first = f" (the first at {later[0].local_time.isoformat()})" if later else ""
    print(f"{verb} {_plural(count, 'event')} later than {args.after}{first}")
    return 0


def _stats_text(db: str, stats: dict) -> str:
    lines = [f"log store: {db}", f"events: {stats['events']}"]
    if stats["events"]:
        lines[-1] += f", from {stats['first_time']} to {stats['last_time']}"
    if stats["unreadable_rows"]:
        lines.append(f"unreadable rows: {stats['unreadable_rows']} (listed below)")
    lines.append("per kind:")
    lines += [f"  {kind:<22}{count:>8}" for kind, count in stats["per_kind"].items()]
    kept = sorted(((n, g) for g, n in stats["kept_genres"].items() if n), reverse=True)
    total = sum(n for n, _ in kept)
    lines.append("kept genres (segment_kept):" + ("" if kept else " none yet"))
    lines += [f"  {genre:<22}{n:>8}  {100 * n / total:5.1f}%" for n, genre in kept]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with a description and an example for every subcommand."""
    parser = argparse.ArgumentParser(
        prog=_PROG, formatter_class=_FORMAT,
        description="Manage this device's private behaviour log: an SQLite file of validated events that the "
                    "federated client trains on. Nothing here leaves the device.",
        epilog=f"examples:\n  {_PROG} validate my_log.jsonl\n  {_PROG} import my_log.jsonl --db ~/.fedpref/events.db"
               f"\n  {_PROG} stats --db ~/.fedpref/events.db --json\n\n"
               "exit codes: 0 all valid, 1 some line was invalid, 2 the command could not run.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub = commands.add_parser(
        "import", formatter_class=_FORMAT, help="validate a JSON Lines log and append its good events to the store",
        description="Validate FILE line by line and append the new good events to the store in one transaction. "
                    "Events the store already holds (a log imported again, or grown since) are counted as already "
                    "present and skipped. Bad lines, lines older than the store's last event, and events more than "
                    "a day after now (a wrong device clock) are printed as file:line: message and not stored. The "
                    "store is created if missing.",
        epilog=f"example:\n  {_PROG} import my_log.jsonl --db ~/.fedpref/events.db --strict")
    sub.add_argument("file", metavar="FILE", help="JSON Lines log, one event per line")
    sub.add_argument("--db", required=True, metavar="PATH", help="the log store (SQLite file) to append to")
    sub.add_argument("--strict", action="store_true", help="import nothing if any line is bad")
    sub.set_defaults(run=run_import)

    sub = commands.add_parser(
        "validate", formatter_class=_FORMAT, help="check a JSON Lines log without storing anything",
        description="Check every line of FILE against the log format (and time order) and print each error with "
                    "its line number, then a summary. Touches no database.",
        epilog=f"example:\n  {_PROG} validate my_log.jsonl")
    sub.add_argument("file", metavar="FILE", help="JSON Lines log, one event per line")
    sub.set_defaults(run=run_validate)

    sub = commands.add_parser(
        "stats", formatter_class=_FORMAT, help="show counts per kind, time range and kept genres of a store",
        description="Summarise the store: events per kind, first and last event time (local), and how often each "
                    "genre was kept. Rows that no longer parse are counted and listed.",
        epilog=f"example:\n  {_PROG} stats --db ~/.fedpref/events.db --json")
    sub.add_argument("--db", required=True, metavar="PATH", help="the log store (SQLite file) to read")
    sub.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    sub.set_defaults(run=run_stats)

    sub = commands.add_parser(
        "drop", formatter_class=_FORMAT, help="delete the events later than a time (repair after a wrong clock)",
        description="Delete every event later than TIME from the store. The repair for an event recorded by a "
                    "device clock set far ahead: as the store's last event it makes every later import 'go "
                    "backwards'. Use --dry-run first to see how many events would go.",
        epilog=f"example:\n  {_PROG} drop --after 2026-12-02T00:00:00Z --db ~/.fedpref/events.db --dry-run")
    sub.add_argument("--after", required=True, metavar="TIME",
                     help="ISO 8601 time with a UTC offset; events strictly later are deleted")
    sub.add_argument("--db", required=True, metavar="PATH", help="the log store (SQLite file) to repair")
    sub.add_argument("--dry-run", action="store_true", help="only count the events that would be deleted")
    sub.set_defaults(run=run_drop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (argparse itself exits 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (_CannotRun, LogStoreError, LogFileError) as exc:
        message = str(exc)
    except OSError as exc:
        message = f"{exc.filename}: {exc.strerror}." if exc.filename and exc.strerror else str(exc)
    except sqlite3.Error as exc:
        message = f"{getattr(args, 'db', '?')}: the log store failed ({exc})."
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
