"""The device's log store: round trips, validation on append, time order, imports, schema checks and durability."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from client.log_store import APPLICATION_ID, PROGRESS_LINES, SCHEMA_VERSION, LogStore, LogStoreError
from model.log.events import Event
from model.log.log_file import LogFileError
from model.log.parsing import EventError
from model.log.vocab import EVENT_KINDS, GENRES
from tests.helpers import ROOT, T0, kept, redone, request


ONE_OF_EACH_KIND = [
    request(T0, prompt="café ☕ with a sax 🎷", offset=-300),
    Event(ts=T0 + 10, utc_offset_min=0, kind="style_chosen", genre="jazz"),
    Event(ts=T0 + 20, utc_offset_min=60, kind="bpm_set", bpm=96.5, direction="down"),
    Event(ts=T0 + 30, utc_offset_min=60, kind="instrument_toggled", instrument="drums", enabled=False),
    Event(ts=T0 + 40, utc_offset_min=330, kind="segment_kept", genre="jazz", bpm=96.0,
          instruments=("piano", "bass")),
    redone(T0 + 50, "rock"),
]


def _line(time: str, genre: str = "pop") -> str:
    return json.dumps({"time": time, "kind": "style_chosen", "genre": genre})


def _write_log(tmp_path: Path, *lines: str, name: str = "log.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _raw(db: Path, sql: str) -> list[tuple]:
    """Run ``sql`` through a plain SQLite connection, as a foreign program or a hand edit would."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "device" / "events.db"


# --- round trip and append -----------------------------------------------------------------------------------------

def test_append_then_read_round_trips_every_kind_across_reopen(db):
    with LogStore.open(db) as store:
        for event in ONE_OF_EACH_KIND:
            store.append(event)
    with LogStore.open(db) as store:
        assert store.events() == ONE_OF_EACH_KIND
        assert store.count() == len(ONE_OF_EACH_KIND)


def test_append_returns_the_event_as_it_reads_back(db):
    event = Event(ts=T0 + 0.1234567, utc_offset_min=60, kind="style_chosen", genre="folk")
    with LogStore.open(db) as store:
        stored = store.append(event)
        assert stored.ts == pytest.approx(event.ts, abs=1e-6) and stored.ts != event.ts
        assert store.events() == [stored]


def test_append_rejects_an_event_breaking_a_rule_naming_field_and_value(db):
    with LogStore.open(db) as store:
        with pytest.raises(EventError) as info:
            store.append(Event(ts=T0, utc_offset_min=0, kind="bpm_set", bpm=500.0, direction="up"))
        assert (info.value.field, info.value.value) == ("bpm", 500)
        assert "between 20 and 300" in info.value.rule
        with pytest.raises(TypeError, match="Found dict"):
            store.append({"kind": "bpm_set"})
        assert store.count() == 0


def test_append_rejects_time_going_backwards_and_accepts_equal_time(db):
    with LogStore.open(db) as store:
        store.append(kept(T0 + 60, "pop"))
        store.append(kept(T0 + 60, "rock"))
        with pytest.raises(EventError) as info:
            store.append(kept(T0 + 59, "jazz"))
        assert info.value.field == "time" and "must not go backwards" in info.value.rule
        assert "store's last event is at 2026-09-07T00:01:00+00:00" in str(info.value)
        assert [e.genre for e in store.events()] == ["pop", "rock"]


def test_append_many_is_all_or_nothing(db):
    bad = Event(ts=T0 + 1, utc_offset_min=0, kind="segment_kept", genre="Jazz", bpm=90.0, instruments=())
    with LogStore.open(db) as store:
        with pytest.raises(EventError, match=r"^event 2 of the batch: field 'genre' = 'Jazz'.*'jazz'"):
            store.append_many([kept(T0, "pop"), bad, kept(T0 + 2, "pop")])
        with pytest.raises(EventError, match=r"^event 3 of the batch: field 'time'.*backwards; event 2 of"):
            store.append_many([kept(T0, "pop"), kept(T0 + 5, "pop"), kept(T0 + 4, "pop")])
        assert store.count() == 0
        assert store.append_many(ONE_OF_EACH_KIND) == ONE_OF_EACH_KIND
        assert store.events() == ONE_OF_EACH_KIND


def test_events_since_ts_returns_the_events_at_or_after_it(db):
    with LogStore.open(db) as store:
        store.append_many(ONE_OF_EACH_KIND)
        assert store.events(since_ts=T0 + 30) == ONE_OF_EACH_KIND[3:]
        assert store.events(since_ts=T0 + 1000) == []
        with pytest.raises(ValueError, match="since_ts must be a finite number.*Found nan"):
            store.events(since_ts=float("nan"))


# --- opening: creation, modes, refusals ----------------------------------------------------------------------------

def test_open_creates_parent_folders_and_a_private_wal_database(db):
    with LogStore.open(db) as store:
        store.append(kept(T0, "pop"))
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: fsync at every commit
        for path in (db, Path(f"{db}-wal")):
            assert path.stat().st_mode & 0o777 == 0o600
    assert _raw(db, "PRAGMA journal_mode") == [("wal",)]
    assert _raw(db, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert _raw(db, "PRAGMA application_id") == [(APPLICATION_ID,)]


def test_open_refuses_a_newer_schema_version_and_leaves_the_file_unchanged(db):
    LogStore.open(db).close()
    _raw(db, "PRAGMA user_version = 99")
    with pytest.raises(LogStoreError, match="schema version 99, written by a newer version.*reads schema 1 only"):
        LogStore.open(db)
    assert _raw(db, "PRAGMA user_version") == [(99,)]


def test_open_refuses_a_foreign_sqlite_database_without_touching_it(tmp_path):
    foreign = tmp_path / "photos.db"
    _raw(foreign, "CREATE TABLE photos (id INTEGER)")
    with pytest.raises(LogStoreError, match=r"is not a log store: its application_id is 0x0.*1 table"):
        LogStore.open(foreign)
    assert _raw(foreign, "PRAGMA journal_mode") == [("delete",)]
    assert _raw(foreign, "SELECT name FROM sqlite_master") == [("photos",)]


def test_open_refuses_a_file_that_is_not_sqlite_a_directory_or_a_missing_path_without_create(tmp_path):
    text = tmp_path / "notes.db"
    text.write_text("these are my notes, not a database\n" * 10)
    with pytest.raises(LogStoreError, match="is not a readable SQLite database"):
        LogStore.open(text)
    with pytest.raises(LogStoreError, match="is a directory; a log store is one SQLite file"):
        LogStore.open(tmp_path)
    with pytest.raises(LogStoreError, match="no log store there"):
        LogStore.open(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_closing_the_store_closes_its_connection(db):
    with LogStore.open(db) as store:
        pass
    with pytest.raises(sqlite3.ProgrammingError):
        store.count()


# --- rows edited outside the store ---------------------------------------------------------------------------------

def test_a_row_that_no_longer_parses_is_reported_with_its_row_id_not_dropped(db):
    with LogStore.open(db) as store:
        store.append_many(ONE_OF_EACH_KIND)
    _raw(db, """UPDATE events SET json_line = '{"kind": "bpm_set"}' WHERE id = 2""")
    _raw(db, "UPDATE events SET kind = 'style_chosen' WHERE id = 4")
    with LogStore.open(db) as store:
        report = store.read()
        assert report.events == [ONE_OF_EACH_KIND[i] for i in (0, 2, 4, 5)]
        assert [str(e).split(":")[0] for e in report.errors] == [f"{db}, row 2", f"{db}, row 4"]
        assert "needs a time" in report.errors[0].rule and "columns must match" in report.errors[1].rule
        with pytest.raises(EventError, match="row 2"):
            store.events()
        assert store.stats()["unreadable_rows"] == 2


# --- stats ---------------------------------------------------------------------------------------------------------

def test_stats_count_kinds_time_range_and_kept_genres(db):
    with LogStore.open(db) as store:
        assert store.stats() == {"events": 0, "per_kind": dict.fromkeys(EVENT_KINDS, 0), "first_time": None,
                                 "last_time": None, "kept_genres": dict.fromkeys(GENRES, 0), "unreadable_rows": 0}
        store.append_many([*ONE_OF_EACH_KIND, kept(T0 + 60, "pop"), kept(T0 + 70, "jazz")])
        stats = store.stats()
    assert stats["events"] == 8
    assert stats["per_kind"] == {"style_chosen": 1, "bpm_set": 1, "instrument_toggled": 1, "segment_kept": 3,
                                 "segment_redone": 1, "generation_requested": 1}
    assert (stats["first_time"], stats["last_time"]) == ("2026-09-06T19:00:00-05:00", "2026-09-07T00:01:10+00:00")
    assert {g: n for g, n in stats["kept_genres"].items() if n} == {"jazz": 2, "pop": 1}
    assert json.loads(json.dumps(stats)) == stats


# --- import --------------------------------------------------------------------------------------------------------

GOOD = [_line("2026-11-02T21:00:00+01:00"), _line("2026-11-02T21:01:00+01:00", "jazz"),
        _line("2026-11-02T21:02:00+01:00", "rock"), _line("2026-11-02T21:03:00+01:00", "folk")]


def test_import_stores_every_good_line_and_reports_the_corrupted_one_by_number(db, tmp_path):
    log = _write_log(tmp_path, GOOD[0], GOOD[1], GOOD[2][:25], "", GOOD[3])
    with LogStore.open(db) as store:
        report = store.import_jsonl(log)
        assert [e.genre for e in store.events()] == ["pop", "jazz", "folk"]
    assert (report.events, report.skipped, report.lines_read, report.stored) == (3, 1, 5, True)
    assert report.errors[0].line == 3 and str(report.errors[0]).startswith(f"{log}:3: ")
    assert report.summary() == "imported 3 events, skipped 1 line"


def test_import_rejects_an_overlong_line_without_losing_the_line_after_it(db, tmp_path):
    huge = json.dumps({"time": "2026-11-02T21:00:30+01:00", "kind": "generation_requested", "prompt": "x" * 20_000})
    log = _write_log(tmp_path, GOOD[0], huge, GOOD[1])
    with LogStore.open(db) as store:
        report = store.import_jsonl(log)
        assert [e.line for e in report.errors] == [2] and "the limit is 8192" in report.errors[0].rule
        assert [e.genre for e in store.events()] == ["pop", "jazz"]


def test_import_in_raise_mode_stores_nothing_if_any_line_is_bad(db, tmp_path):
    log = _write_log(tmp_path, GOOD[0], GOOD[1], '{"time": "2026-11-02T21:02:00+01:00", "kind": "dance"}')
    with LogStore.open(db) as store:
        with pytest.raises(EventError, match=r":3: field 'kind' = 'dance'") as info:
            store.import_jsonl(log, on_error="raise")
        assert info.value.line == 3 and store.count() == 0


def test_import_rejects_lines_older_than_the_stores_last_event_by_line_number(db, tmp_path):
    log = _write_log(tmp_path, *GOOD)
    with LogStore.open(db) as store:
        store.append(Event(ts=T0 + 86400 * 56 + 72060, utc_offset_min=0, kind="style_chosen", genre="rnb"))
        assert store.events()[-1].local_time.isoformat() == "2026-11-02T20:01:00+00:00"  # = 21:01 at +01:00
        report = store.import_jsonl(log)
        assert [e.line for e in report.errors] == [1]
        assert "the store's last event is at 2026-11-02T20:01:00+00:00" in report.errors[0].rule
        assert [e.genre for e in store.events()] == ["rnb", "jazz", "rock", "folk"]


def test_import_rejects_a_line_earlier_than_the_previous_line(db, tmp_path):
    log = _write_log(tmp_path, GOOD[0], GOOD[2], GOOD[1], GOOD[3])
    with LogStore.open(db) as store:
        report = store.import_jsonl(log)
        assert [e.line for e in report.errors] == [3] and "the event on line 2" in report.errors[0].rule
        assert store.count() == 3


def test_importing_the_same_file_twice_stores_it_once_and_counts_it_already_present(db, tmp_path):
    log = _write_log(tmp_path, *GOOD, GOOD[3])  # the last event twice, at the same time
    with LogStore.open(db) as store:
        assert store.import_jsonl(log).events == 5
        again = store.import_jsonl(log)
        assert (again.events, again.already_present, again.errors) == (0, 5, [])
        assert again.summary() == "imported 0 events, 5 already present, skipped 0 lines"
        assert store.count() == 5


def test_importing_a_grown_log_appends_only_the_new_lines(db, tmp_path):
    with LogStore.open(db) as store:
        store.import_jsonl(_write_log(tmp_path, *GOOD[:2]))
        grown = store.import_jsonl(_write_log(tmp_path, *GOOD))
        assert (grown.events, grown.already_present, grown.errors) == (2, 2, [])
        assert [e.genre for e in store.events()] == ["pop", "jazz", "rock", "folk"]


def test_a_reimported_line_that_is_not_in_the_store_is_still_too_old(db, tmp_path):
    with LogStore.open(db) as store:
        store.import_jsonl(_write_log(tmp_path, GOOD[0], GOOD[2]))
        report = store.import_jsonl(_write_log(tmp_path, GOOD[0], GOOD[1], GOOD[2], GOOD[3]))
        assert (report.events, report.already_present, [e.line for e in report.errors]) == (1, 2, [2])
        assert "must not go backwards" in report.errors[0].rule


# --- issue 16: far-future events, repair, integrity, encodings, file modes ----------------------------------------

FAR = _line("2099-01-01T00:00:00+00:00", "rock")


def test_a_far_future_line_is_rejected_alone_and_never_blocks_later_imports(db, tmp_path):
    with LogStore.open(db) as store:
        report = store.import_jsonl(_write_log(tmp_path, GOOD[0], FAR, *GOOD[1:]))
        assert (report.events, [e.line for e in report.errors]) == (4, [2])
        assert "hours after the time of reading" in report.errors[0].rule
        later = store.import_jsonl(_write_log(tmp_path, _line("2026-11-03T08:00:00+01:00", "rnb"), name="b.jsonl"))
        assert (later.events, later.errors) == (1, [])


def test_drop_after_removes_the_events_later_than_a_time_so_imports_work_again(db, tmp_path):
    with LogStore.open(db) as store:
        store.append_many([kept(T0, "pop"), kept(T0 + 60, "jazz"), kept(4_070_908_800.0, "rock")])  # 2099
        assert store.import_jsonl(_write_log(tmp_path, _line("2026-11-03T08:00:00+01:00"))).events == 0
        assert store.drop_after(T0 + 60, dry_run=True) == 1 and store.count() == 3
        assert store.drop_after(T0 + 60) == 1
        assert [e.genre for e in store.events()] == ["pop", "jazz"]
        assert store.import_jsonl(_write_log(tmp_path, _line("2026-11-03T08:00:00+01:00"))).events == 1


def _corrupt_index_page(db: Path) -> None:
    """Overwrite the page of the ts index with garbage, as a bad disk sector would; the table stays readable."""
    page_size, root = _raw(db, "PRAGMA page_size")[0][0], _raw(db, "SELECT rootpage FROM sqlite_master "
                                                                  "WHERE name = 'events_by_ts'")[0][0]
    with open(db, "r+b") as f:
        f.seek((root - 1) * page_size + 8)
        f.write(b"\xff" * 64)


def test_a_damaged_page_is_found_on_open_and_refused_naming_the_file_and_the_way_out(db):
    with LogStore.open(db) as store:
        store.append_many([kept(T0 + i, "pop") for i in range(300)])
    _raw(db, "PRAGMA wal_checkpoint(TRUNCATE)")
    _corrupt_index_page(db)
    before = db.read_bytes()
    for create in (True, False):
        with pytest.raises(LogStoreError, match=r"integrity check") as info:
            LogStore.open(db, create=create)
        assert str(db) in str(info.value) and ".recover" in str(info.value)
    assert db.read_bytes() == before


def test_a_store_made_readable_by_others_is_made_private_again_on_open(db):
    LogStore.open(db).close()
    os.chmod(db, 0o644)
    with LogStore.open(db) as store:
        store.append(kept(T0, "pop"))
        assert db.stat().st_mode & 0o777 == 0o600 and Path(f"{db}-wal").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("head", [b"\xef\xbb\xbf", b""])
def test_import_accepts_a_utf8_bom_and_keeps_the_first_event(db, tmp_path, head):
    log = tmp_path / "log.jsonl"
    log.write_bytes(head + "".join(line + "\n" for line in GOOD).encode())
    with LogStore.open(db) as store:
        assert store.import_jsonl(log).events == 4


def test_import_refuses_a_utf16_file_at_once_and_stores_nothing(db, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_bytes("".join(line + "\n" for line in GOOD).encode("utf-16"))
    with LogStore.open(db) as store:
        with pytest.raises(LogFileError, match="UTF-16"):
            store.import_jsonl(log)
        assert store.count() == 0


def test_import_reports_progress_on_a_long_file(db, tmp_path):
    lines = [json.dumps({"time": f"2026-11-02T{10 + i // 3600:02}:{i // 60 % 60:02}:{i % 60:02}Z",
                         "kind": "style_chosen", "genre": "pop"}) for i in range(PROGRESS_LINES + 10)]
    seen: list[int] = []
    with LogStore.open(db) as store:
        assert store.import_jsonl(_write_log(tmp_path, *lines), progress=seen.append).events == len(lines)
    assert seen == [PROGRESS_LINES]


def test_import_dry_run_checks_against_the_store_but_stores_nothing(db, tmp_path):
    log = _write_log(tmp_path, *GOOD)
    with LogStore.open(db) as store:
        store.import_jsonl(_write_log(tmp_path, _line("2026-11-02T21:01:00+01:00", "rnb"), name="first.jsonl"))
        report = store.import_jsonl(log, dry_run=True)
        assert (report.events, [e.line for e in report.errors], report.stored) == (3, [1], False)
        assert report.summary() == "would import 3 events, skipped 1 line"
        assert store.count() == 1


def test_import_of_a_missing_file_raises_oserror_and_bad_mode_valueerror(db, tmp_path):
    with LogStore.open(db) as store:
        with pytest.raises(FileNotFoundError):
            store.import_jsonl(tmp_path / "missing.jsonl")
        with pytest.raises(ValueError, match="on_error must be 'skip' or 'raise'. Found 'ignore'"):
            store.import_jsonl(tmp_path / "missing.jsonl", on_error="ignore")


# --- durability and concurrency: real processes --------------------------------------------------------------------

_APPENDER = """
import sys
from client.log_store import LogStore
from model.log.events import Event
from model.log.vocab import EVENT_KINDS, GENRES
store = LogStore.open(sys.argv[1])
for i in range(int(sys.argv[2])):
    store.append(Event(ts=float(sys.argv[3]) + float(sys.argv[4]) * i, utc_offset_min=60, kind="bpm_set",
                       bpm=100.0, direction="up"))
    print(i, flush=True)
"""


def _appender(db: Path, count: int, *, step: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _APPENDER, str(db), str(count), str(T0), str(step)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_writer_killed_mid_loop_loses_no_append_that_returned(db):
    child = _appender(db, 1_000_000, step=1.0)
    try:
        # range first, so zip stops without reading (and losing) a 151st line
        confirmed = [int(line) for _, line in zip(range(150), child.stdout, strict=False)]
        os.kill(child.pid, signal.SIGKILL)
        confirmed += [int(line) for line in child.stdout.read().split()]  # printed before the kill landed
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    assert len(confirmed) >= 150 and confirmed == list(range(len(confirmed)))
    assert _raw(db, "PRAGMA integrity_check") == [("ok",)]
    with LogStore.open(db) as store:
        times = [e.ts for e in store.events()]
    assert len(times) in (len(confirmed), len(confirmed) + 1)  # at most the one in flight was also committed
    assert times == [T0 + i for i in range(len(times))]


def test_two_processes_opening_and_appending_at_once_lose_nothing(db):
    children = [_appender(db, 40, step=0.0) for _ in range(2)]
    outputs = [child.communicate(timeout=60) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    assert _raw(db, "PRAGMA integrity_check") == [("ok",)]
    with LogStore.open(db) as store:
        assert store.count() == 80 and len(store.events()) == 80
