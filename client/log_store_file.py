"""The log store's SQLite file: opening it, checking it is a log store of this schema, and SQLite's failures.

A log store is marked by ``PRAGMA application_id`` and versioned by ``PRAGMA user_version``. A file that is not one
(another program's database, random bytes, an empty file when not creating) is refused with ``LogStoreError`` and
left unchanged, never guessed at. Text is read with a decoder that cannot fail, so a row of invalid UTF-8 (a damaged
file, an edit by hand) is reported as that row instead of an SQLite error that loses every row.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 1
"""Stored in ``PRAGMA user_version``; a file with another version is refused, not guessed at."""
APPLICATION_ID = 0x66656470  # "fedp": PRAGMA application_id marks an SQLite file as a log store of this project.
BUSY_TIMEOUT_S = 10.0
"""How long a writer waits for another process's write transaction before ``sqlite3.OperationalError``."""

_SCHEMA = (
    # AUTOINCREMENT: ids keep the order of insertion even if rows are ever deleted.
    ("CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, utc_offset_min INTEGER NOT NULL,"
     " kind TEXT NOT NULL, json_line TEXT NOT NULL)"),
    "CREATE INDEX events_by_ts ON events (ts)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_WAITING = ("SQLITE_BUSY", "SQLITE_LOCKED")
"""Error names of a lock held by another process: documented as ``sqlite3.OperationalError``, worth a retry."""


class LogStoreError(Exception):
    """The file cannot be used as a log store: not SQLite, another program's database, a newer schema, a folder,
    an empty file opened without ``create``, or a file damaged past reading."""


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A checked connection to the log store at ``path``, creating file and schema only when ``create``.

    Raises:
        LogStoreError: see ``LogStore.open``.
    """
    if path.is_dir():
        raise LogStoreError(f"{path} is a directory; a log store is one SQLite file, e.g. {path / 'events.db'}.")
    if path.exists() and not path.is_file():
        raise LogStoreError(f"{path} is not a regular file (a device, pipe or socket); a log store is one SQLite file.")
    if path.exists():
        _make_private(path, required=create)
    else:
        if not create:
            raise LogStoreError(f"{path}: no log store there (no such file).")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # private: SQLite gives -wal the same mode
        except OSError as exc:
            raise LogStoreError(f"{path}: cannot create a log store ({exc.strerror}).") from None
    try:  # mode=rw: never let SQLite create a file we did not create with mode 0600
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S,
                               isolation_level=None)
    except sqlite3.Error as exc:
        raise LogStoreError(f"{path}: cannot open the log store ({exc}).") from None
    conn.text_factory = _decode_text
    try:
        _prepare(conn, path, create)
    except BaseException:
        conn.close()
        raise
    return conn


def _make_private(path: Path, *, required: bool) -> None:
    """Give the store (and its WAL and shared-memory files) mode 0600: it holds the user's behaviour.

    A store created by an older version, copied, or made by hand may be readable by others. When only reading
    (``required`` False) a store one cannot chmod (another user's, a read-only disk) is still read.
    """
    for part in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = part.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(part, mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if required:
                raise LogStoreError(f"{part} is readable by other users (mode {mode:o}) and cannot be made private "
                                    f"({exc.strerror}); run chmod 600 on it.") from None


def _decode_text(data: bytes) -> str:
    """SQLite TEXT as str; bytes that are not UTF-8 become lone surrogates (see ``undecodable``), never an error."""
    return data.decode("utf-8", "surrogateescape")


def undecodable(text: str) -> int | None:
    """Index of the first character of ``text`` that was a byte of invalid UTF-8 in the file, or None.

    Strict UTF-8 never decodes to a surrogate, so a surrogate in text read through ``_decode_text`` marks such a byte.
    """
    return next((i for i, char in enumerate(text) if "\udc80" <= char <= "\udcff"), None)


@contextmanager
def sqlite_errors(path: Path) -> Iterator[None]:
    """Raise SQLite's failures inside as ``LogStoreError`` naming ``path`` and the way out.

    A lock held too long by another process stays ``sqlite3.OperationalError`` (retry later), and misuse such as a
    closed store stays ``sqlite3.ProgrammingError``.
    """
    try:
        yield
    except sqlite3.ProgrammingError:
        raise
    except sqlite3.DatabaseError as exc:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(_WAITING):
            raise
        if type(exc) is sqlite3.DatabaseError:  # SQLITE_CORRUPT, SQLITE_NOTADB ...
            raise _unreadable(path, exc) from None
        raise LogStoreError(f"{path}: the log store failed ({exc}).") from None


def _unreadable(path: Path, exc: sqlite3.DatabaseError) -> LogStoreError:
    """The error for a file SQLite cannot read: not a database at all, or a damaged one."""
    if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
        return LogStoreError(f"{path} is not a readable SQLite database ({exc}); it was left unchanged.")
    return LogStoreError(f"{path} is damaged and SQLite cannot read it ({exc}); it was left unchanged. Restore the "
                         "file from a backup, or salvage its readable rows with the sqlite3 shell's .recover command.")


def _prepare(conn: sqlite3.Connection, path: Path, create: bool) -> None:
    """Create the schema in an empty file (only if ``create``), refuse anything but a log store of
    ``SCHEMA_VERSION``, turn on WAL."""
    try:
        if _header(conn) == (0, 0, 0):
            if not create:  # SQLite reads a file of 0 or 1 bytes as an empty database: writing there would destroy it
                raise LogStoreError(f"{path} is not a log store: it is an empty SQLite database or a file of "
                                    f"{path.stat().st_size} byte(s); it was left unchanged. Open it with create=True "
                                    "(or import a log into it) to start a new store there.")
            _journal_mode_wal(conn)
            conn.execute("BEGIN IMMEDIATE")
            if _header(conn) == (0, 0, 0):  # another process may have created it while we waited for the lock
                for statement in _SCHEMA:
                    conn.execute(statement)
            conn.execute("COMMIT")
        version, app_id, tables = _header(conn)
    except sqlite3.OperationalError as exc:  # e.g. locked by another process for longer than BUSY_TIMEOUT_S
        raise LogStoreError(f"{path}: cannot open the log store ({exc}).") from None
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        raise _unreadable(path, exc) from None
    if app_id != APPLICATION_ID:
        raise LogStoreError(f"{path} is not a log store: its application_id is {app_id:#x}, a log store's is "
                            f"{APPLICATION_ID:#x} ({tables} table(s) of another program); it was left unchanged.")
    if version != SCHEMA_VERSION:
        newer = "a newer version of this software" if version > SCHEMA_VERSION else "an unsupported older version"
        raise LogStoreError(f"{path} has log store schema version {version}, written by {newer}; this version reads "
                            f"schema {SCHEMA_VERSION} only. It was left unchanged.")
    with sqlite_errors(path):
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        raise LogStoreError(f"{path} is damaged: SQLite's integrity check (quick_check) says {'; '.join(problems)}. "
                            "It was left unchanged. Restore the file from a backup, or salvage its readable rows into "
                            f"a new store: sqlite3 {path} .recover | sqlite3 {path}.recovered")
    with sqlite_errors(path):
        mode = _journal_mode_wal(conn)
        conn.execute("PRAGMA synchronous = FULL")
    if mode != "wal":
        raise LogStoreError(f"{path}: the log store needs journal_mode WAL for durable appends; SQLite gave {mode!r}.")


def _journal_mode_wal(conn: sqlite3.Connection) -> str:
    """``PRAGMA journal_mode = WAL``, retried for up to ``BUSY_TIMEOUT_S`` while another process holds the lock it
    needs; returns the mode SQLite reports. SQLite answers "database is locked" at once here instead of waiting
    when two processes open a new store together (its busy handler is not called where waiting could deadlock)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_BUSY" or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _header(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(user_version, application_id, number of tables); (0, 0, 0) is a new, empty file."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
    return version, app_id, tables
