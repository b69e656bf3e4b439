"""Reading a behaviour log file as lines: the file-level checks that come before any line is parsed.

A log is UTF-8 with LF (or CRLF) line ends. A UTF-8 byte order mark, which some editors write, is skipped. A file in
UTF-16 or UTF-32, or one whose lines end in CR alone, would otherwise produce one error per line (or one huge line)
and lose every event; it is refused at once with one ``LogFileError`` naming the problem and the fix.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

HEAD_BYTES = 65536
"""How much of the file's start is examined for its encoding and line ends."""
_DISCARD_CHUNK = 65536


class LogFileError(ValueError):
    """The file as a whole is not UTF-8 JSON Lines (wrong encoding or line ends); no line of it was read."""


def bounded_lines(stream: BinaryIO, max_line_bytes: int) -> Iterator[bytes]:
    """Yield each line, at most ``max_line_bytes + 1`` bytes of it; the rest of a longer line is read and dropped."""
    while line := stream.readline(max_line_bytes + 1):
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            while (rest := stream.readline(_DISCARD_CHUNK)) and not rest.endswith(b"\n"):
                pass
        yield line


def head_problem(head: bytes) -> str | None:
    """What makes a file starting with ``head`` unreadable as UTF-8 JSON Lines, or None if nothing does."""
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            return (f"is encoded in {name} (it starts with a {name} byte order mark); a behaviour log must be UTF-8. "
                    f"Convert it, e.g. iconv -f {name} -t UTF-8 FILE > FILE.utf8")
    if _alternating_nuls(head):
        return ("looks like UTF-16 without a byte order mark (every other byte is NUL); a behaviour log "
                "must be UTF-8. Convert it, e.g. iconv -f UTF-16LE -t UTF-8 FILE > FILE.utf8")
    if b"\r" in head and b"\n" not in head:
        return ("has lines that end in CR alone (old Mac style), so it reads as one line; a behaviour log needs LF "
                "or CRLF line ends. Convert it, e.g. tr '\\r' '\\n' < FILE > FILE.fixed")
    return None


def _alternating_nuls(head: bytes) -> bool:
    """True for text in UTF-16 without a byte order mark: ASCII there has NUL at every even or every odd byte.

    UTF-8 JSON never holds a raw NUL, and a damaged line with some NULs lacks the alternation, so neither is taken
    for UTF-16.
    """
    if len(head) < 8:
        return False
    even, odd = head[0::2], head[1::2]
    shares = sorted((even.count(0) / len(even), odd.count(0) / len(odd)))
    return shares[1] >= 0.9 and shares[0] <= 0.1


@contextmanager
def open_log_lines(path: str | os.PathLike[str], max_line_bytes: int) -> Iterator[Iterator[bytes]]:
    """Open ``path`` and give its lines (see ``bounded_lines``), a leading UTF-8 BOM removed.

    Raises:
        LogFileError: if the file is UTF-16/UTF-32 or has CR-only line ends, naming ``path`` and the fix.
        OSError: if the file cannot be read.
    """
    with open(path, "rb", buffering=HEAD_BYTES) as stream:
        head = stream.peek(HEAD_BYTES)[:HEAD_BYTES]
        problem = head_problem(head)
        if problem is not None:
            raise LogFileError(f"{path} {problem}.")
        if head.startswith(codecs.BOM_UTF8):
            stream.read(len(codecs.BOM_UTF8))
        yield bounded_lines(stream, max_line_bytes)
