"""Replace a file atomically and durably: readers see the old file or the new one, never half of one.

The one routine every writer of a whole file uses (device ledger, checkpoint, metrics, event log, stream state,
WAV). The content goes to a temporary file in the target's directory (``mkstemp``: readable by its owner only,
as ledgers, logs and states reflect private behaviour), which is flushed and fsynced, renamed over the target
(``os.replace``, atomic on POSIX within one file system), and then the directory is fsynced so the rename itself
survives a power cut. On any error the temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """Yield a file to write ``path``'s new content to; on a clean exit it replaces ``path`` durably.

    Args:
        path: the file to replace; its directory must exist.
        mode: ``"wb"`` for bytes or ``"w"`` for text.
        encoding, newline: as for ``open`` (text mode only).

    Raises:
        ValueError: if ``mode`` is neither ``"w"`` nor ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb'; found {mode!r}.")
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (``atomic_write``)."""
    with atomic_write(path) as handle:
        handle.write(data)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk; a no-op where directories cannot be
    opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
