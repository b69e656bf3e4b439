"""``python -m client.logs``, run as a real process: messages, exit codes (0 ok, 1 bad lines, 2 cannot run), help."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from client.log_store import PROGRESS_LINES, LogStore
from client.logs import SHOWN_ERRORS
from model.log.event_log import parse_lines
from tests.helpers import ROOT

SUBCOMMANDS = ("import", "validate", "stats", "drop")

GOOD = [
    '{"time": "2026-11-02T21:13:50+01:00", "kind": "generation_requested", "prompt": "something relaxing"}',
    '{"time": "2026-11-02T21:14:05+01:00", "kind": "segment_kept", "genre": "jazz", "bpm": 96, "instruments": []}',
    '{"time": "2026-11-02T21:14:40+01:00", "kind": "segment_kept", "genre": "jazz", "bpm": 90, "instruments": []}',
    '{"time": "2026-11-02T21:15:10+01:00", "kind": "segment_kept", "genre": "pop", "bpm": 120, "instruments": []}',
]
BAD_BPM = '{"time": "2026-11-02T21:14:20+01:00", "kind": "bpm_set", "bpm": "96", "direction": "up"}'


def _logs(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.logs", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)


def _write_log(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "log.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _stored(db: Path) -> int:
    with LogStore.open(db) as store:
        return store.count()


def test_help_describes_every_subcommand_with_an_example():
    top = _logs("--help")
    assert top.returncode == 0 and all(name in top.stdout for name in SUBCOMMANDS)
    for name in SUBCOMMANDS:
        sub = _logs(name, "--help")
        assert sub.returncode == 0
        assert f"example:\n  python -m client.logs {name} " in sub.stdout


def test_import_stores_good_lines_prints_each_bad_line_and_exits_1(tmp_path):
    log = _write_log(tmp_path, GOOD[0], GOOD[1], BAD_BPM, GOOD[2])
    db = tmp_path / "store" / "events.db"
    run = _logs("import", log, "--db", db)
    assert run.returncode == 1, run.stderr
    assert run.stdout.splitlines() == [
        (f"{log}:3: field 'bpm' = '96': BPM must be a number between 20 and 300, written as a JSON number "
         "(not a string or boolean)."),
        "imported 3 events, skipped 1 line",
    ]
    assert _stored(db) == 3


def test_import_of_a_clean_file_exits_0_and_again_counts_every_line_already_present(tmp_path):
    log, db = _write_log(tmp_path, *GOOD), tmp_path / "events.db"
    first = _logs("import", log, "--db", db)
    assert (first.returncode, first.stdout) == (0, "imported 4 events, skipped 0 lines\n")
    again = _logs("import", log, "--db", db)
    assert (again.returncode, again.stdout) == (0, "imported 0 events, 4 already present, skipped 0 lines\n")
    assert _stored(db) == 4


def test_strict_import_stores_nothing_when_any_line_is_bad(tmp_path):
    log, db = _write_log(tmp_path, GOOD[0], BAD_BPM, GOOD[1], "{oops"), tmp_path / "events.db"
    run = _logs("import", log, "--db", db, "--strict")
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines[:2]] == [f"{log}:2", f"{log}:4"]
    assert lines[2] == "imported 0 events (--strict: 2 bad lines, so none of the 2 valid events was stored)"
    assert _stored(db) == 0
    clean = _logs("import", _write_log(tmp_path, *GOOD), "--db", db, "--strict")
    assert (clean.returncode, clean.stdout, _stored(db)) == (0, "imported 4 events, skipped 0 lines\n", 4)


def test_validate_prints_each_error_and_a_summary_and_stores_nothing(tmp_path):
    log = _write_log(tmp_path, GOOD[0], BAD_BPM, GOOD[2], GOOD[1])
    run = _logs("validate", log)
    assert run.returncode == 1
    assert run.stdout.splitlines()[0].startswith(f"{log}:2: field 'bpm' = '96': ")
    assert run.stdout.splitlines()[1].startswith(f"{log}:4: field 'time' = '2026-11-02T21:14:05+01:00': time must "
                                                 "not go backwards")
    assert run.stdout.splitlines()[2] == f"{log}: 2 valid events, 2 invalid lines"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]
    ok = _logs("validate", _write_log(tmp_path, *GOOD))
    assert (ok.returncode, ok.stdout) == (0, f"{log}: 4 valid events, 0 invalid lines\n")


def test_stats_prints_kinds_time_range_and_kept_genres(tmp_path):
    db = tmp_path / "events.db"
    _logs("import", _write_log(tmp_path, *GOOD), "--db", db)
    run = _logs("stats", "--db", db)
    assert run.returncode == 0, run.stderr
    text = run.stdout
    assert "events: 4, from 2026-11-02T21:13:50+01:00 to 2026-11-02T21:15:10+01:00" in text
    assert "  segment_kept                 3" in text and "  bpm_set                      0" in text
    assert text.index("jazz") < text.index("pop")  # most kept first
    assert "  jazz                         2   66.7%" in text


def test_stats_json_is_one_machine_readable_object(tmp_path):
    db = tmp_path / "events.db"
    _logs("import", _write_log(tmp_path, *GOOD), "--db", db)
    run = _logs("stats", "--db", db, "--json")
    stats = json.loads(run.stdout)
    with LogStore.open(db) as store:
        assert stats == store.stats()
    assert stats["kept_genres"]["jazz"] == 2 and stats["per_kind"]["generation_requested"] == 1


def test_stats_lists_a_row_that_no_longer_parses_and_exits_1(tmp_path):
    db = tmp_path / "events.db"
    _logs("import", _write_log(tmp_path, *GOOD), "--db", db)
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("""UPDATE events SET json_line = '{"kind": 1}' WHERE id = 3""")
    conn.close()
    run = _logs("stats", "--db", db)
    assert run.returncode == 1 and "unreadable rows: 1" in run.stdout
    assert f"{db}, row 3: field 'kind' = 1: kind must be one of" in run.stdout
    as_json = _logs("stats", "--db", db, "--json")
    assert json.loads(as_json.stdout)["unreadable_rows"] == 1 and "row 3" in as_json.stderr


def _not_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("my shopping list, not a database\n" * 20)
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.db"
    path.touch()
    return path


def _newer_schema(tmp_path: Path) -> Path:
    path = tmp_path / "newer.db"
    LogStore.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    return path


CANNOT_RUN = {
    "missing file to import": (lambda t: ["import", t / "nope.jsonl", "--db", t / "e.db"], "nope.jsonl: no such file."),
    "missing file to validate": (lambda t: ["validate", t / "nope.jsonl"], "nope.jsonl: no such file."),
    "directory as file": (lambda t: ["validate", t], "is a directory; give a JSON Lines file"),
    "directory as db": (lambda t: ["import", _write_log(t, *GOOD), "--db", t], "is a directory; a log store is one"),
    "file that is not sqlite": (lambda t: ["stats", "--db", _not_sqlite(t)], "is not a readable SQLite database"),
    "newer schema": (lambda t: ["stats", "--db", _newer_schema(t)], "schema version 7, written by a newer version"),
    "missing db for stats": (lambda t: ["stats", "--db", t / "none.db"], "none.db: no log store there"),
    "endless device to validate": (lambda t: ["validate", "/dev/zero"], "/dev/zero is not a regular file"),
    "endless device to import": (lambda t: ["import", "/dev/zero", "--db", t / "e.db"], "is not a regular file"),
    "device as db": (lambda t: ["import", _write_log(t, *GOOD), "--db", "/dev/zero"], "is not a regular file"),
    "empty file as db for stats": (lambda t: ["stats", "--db", _empty(t)], "empty.db is not a log store"),
}


@pytest.mark.parametrize("case", CANNOT_RUN)
def test_a_command_that_cannot_run_says_why_in_one_line_and_exits_2(tmp_path, case):
    make_args, expected = CANNOT_RUN[case]
    run = _logs(*make_args(tmp_path))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: ") and expected in run.stderr
    assert not (tmp_path / "none.db").exists()


def test_bad_usage_exits_2_with_usage():
    run = _logs("import", "log.jsonl")
    assert run.returncode == 2 and "the following arguments are required: --db" in run.stderr


# --- issue 16 ------------------------------------------------------------------------------------------------------

FAR = '{"time": "2099-01-01T00:00:00Z", "kind": "style_chosen", "genre": "pop"}'


def test_drop_after_repairs_a_store_blocked_by_a_far_future_event(tmp_path):
    db = tmp_path / "events.db"
    with LogStore.open(db) as store:  # the app appended an event from a clock set to 2099
        store.append_many(parse_lines([GOOD[0], FAR]).events)
    blocked = _logs("import", _write_log(tmp_path, GOOD[1]), "--db", db)
    assert blocked.returncode == 1 and "must not go backwards" in blocked.stdout
    dry = _logs("drop", "--after", "2026-12-31T00:00:00Z", "--db", db, "--dry-run")
    assert (dry.returncode, dry.stdout) == (0, "would drop 1 event later than 2026-12-31T00:00:00Z "
                                               "(the first at 2099-01-01T00:00:00+00:00)\n")
    assert _stored(db) == 2
    done = _logs("drop", "--after", "2026-12-31T00:00:00Z", "--db", db)
    assert done.returncode == 0 and done.stdout.startswith("dropped 1 event later than")
    assert _logs("import", _write_log(tmp_path, GOOD[1]), "--db", db).returncode == 0 and _stored(db) == 2


def test_drop_refuses_a_time_that_is_not_iso_8601_with_offset(tmp_path):
    db = tmp_path / "events.db"
    LogStore.open(db).close()
    run = _logs("drop", "--after", "yesterday", "--db", db)
    assert run.returncode == 2 and run.stderr.startswith("error: --after") and run.stderr.count("\n") == 1


def test_a_utf16_or_cr_only_file_is_refused_in_one_line_and_no_store_is_created(tmp_path):
    for data in ("\n".join(GOOD).encode("utf-16"), "\r".join(GOOD).encode() + b"\r"):
        log = tmp_path / "log.jsonl"
        log.write_bytes(data)
        for args in (["import", log, "--db", tmp_path / "new.db"], ["validate", log]):
            run = _logs(*args)
            assert run.returncode == 2 and run.stdout == "" and run.stderr.count("\n") == 1
            assert "UTF-16" in run.stderr or "CR alone" in run.stderr
    assert not (tmp_path / "new.db").exists()


def test_import_of_an_unreadable_file_creates_no_store(tmp_path):
    log = _write_log(tmp_path, *GOOD)
    log.chmod(0)
    try:
        if os.access(log, os.R_OK):
            pytest.skip("running as a user who can read any file (root)")
        run = _logs("import", log, "--db", tmp_path / "store" / "events.db")
    finally:
        log.chmod(0o600)
    assert run.returncode == 2 and "Permission denied" in run.stderr
    assert not (tmp_path / "store").exists()


def test_many_bad_lines_are_summarised_after_the_first_ones_with_a_count(tmp_path):
    log = _write_log(tmp_path, *(["{oops"] * (SHOWN_ERRORS + 30)), GOOD[0])
    for args in (["import", log, "--db", tmp_path / "events.db"], ["validate", log]):
        run = _logs(*args)
        lines = run.stdout.splitlines()
        assert run.returncode == 1 and len(lines) == SHOWN_ERRORS + 2
        assert lines[-2] == f"... and 30 more bad lines ({SHOWN_ERRORS + 30} in all; the first {SHOWN_ERRORS} shown)"


def test_a_damaged_store_is_refused_by_stats_and_import_with_exit_2(tmp_path):
    db = tmp_path / "events.db"
    with LogStore.open(db) as store:
        store.append_many(parse_lines(GOOD * 1).events)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'events_by_ts'").fetchone()[0]
    conn.close()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size + 8)
        f.write(b"\xff" * 64)
    for args in (["stats", "--db", db], ["import", _write_log(tmp_path, GOOD[0]), "--db", db]):
        run = _logs(*args)
        assert run.returncode == 2 and "integrity check" in run.stderr and ".recover" in run.stderr


@pytest.mark.slow  # 50,000 lines through the command (seconds); the progress itself: tests/test_log_store.py, fast
def test_a_long_import_reports_progress_on_stderr(tmp_path):
    lines = [json.dumps({"time": f"2026-11-02T{10 + i // 3600:02}:{i // 60 % 60:02}:{i % 60:02}Z",
                         "kind": "style_chosen", "genre": "pop"}) for i in range(PROGRESS_LINES + 1)]
    run = _logs("import", _write_log(tmp_path, *lines), "--db", tmp_path / "events.db")
    assert run.returncode == 0 and f"read {PROGRESS_LINES:,} lines" in run.stderr
