"""Hostile log files, round two (issue 16): duplicate keys, byte order marks, line ends and encodings, far-future
times and re-imports, property-based over valid logs drawn as in ``test_hostile_inputs`` (``tests.helpers``).

Properties: a line with a repeated key is one counted skip naming the key, never "last one wins"; a UTF-8 BOM and
CRLF change nothing; a UTF-16/UTF-32 or CR-only file is one ``LogFileError`` naming the file, never one error per
line; an event beyond the future tolerance costs its own line only; importing any prefix of a log and then the
whole log stores the log exactly once, the prefix counted as already present.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.log_store import LogStore
from model.log.event_log import load_events
from model.log.log_file import LogFileError
from model.log.time_rules import FUTURE_TOLERANCE_S
from tests.helpers import FAST, FEW, JSON_VALUES, READ_IN_2100, event_line, event_objects, expected_event, valid_log

NOW = 1_796_000_000.0  # 2026-11-30T00:53:20Z: the reading time of the far-future properties


def _file(tmp: str, data: bytes) -> Path:
    path = Path(tmp) / "log.jsonl"
    path.write_bytes(data)
    return path


@st.composite
def duplicate_key_lines(draw: st.DrawFn) -> tuple[bytes, str]:
    """(a valid event's line with one of its keys written twice, the key); the two values may be equal or not."""
    obj = draw(event_objects())
    key = draw(st.sampled_from(sorted(obj)))
    second = draw(st.just(obj[key]) | JSON_VALUES)
    body = json.dumps(obj)[:-1] + f", {json.dumps(key)}: {json.dumps(second)}" + "}"
    return body.encode() + b"\n", key


@FAST
@given(data=st.data())
def test_a_line_with_a_repeated_key_is_one_counted_skip_naming_the_key_and_its_neighbours_are_kept(data):
    good = valid_log(data.draw, max_size=4)
    dup, key = data.draw(duplicate_key_lines())
    at = data.draw(st.integers(0, len(good)))
    lines = [event_line(obj) for obj in good]
    lines.insert(at, dup)
    with tempfile.TemporaryDirectory() as tmp:
        report = load_events(_file(tmp, b"".join(lines)), on_error="skip", now=READ_IN_2100)
    assert report.events == [expected_event(obj) for obj in good]
    assert [(e.line, e.field) for e in report.errors] == [(at + 1, key)]


@FAST
@given(data=st.data())
def test_a_utf8_bom_and_crlf_line_ends_change_nothing(data):
    good = valid_log(data.draw, max_size=6)
    lf = b"".join(event_line(obj) for obj in good)
    variant = data.draw(st.sampled_from(("bom", "crlf", "bom+crlf")))
    body = lf.replace(b"\n", b"\r\n") if "crlf" in variant else lf
    body = b"\xef\xbb\xbf" + body if "bom" in variant else body
    with tempfile.TemporaryDirectory() as tmp:
        report = load_events(_file(tmp, body), on_error="skip", now=READ_IN_2100)
    assert report.events == [expected_event(obj) for obj in good] and report.skipped == 0


@FAST
@given(data=st.data(), encoding=st.sampled_from(("utf-16", "utf-16-le", "utf-16-be", "utf-32", "cr")))
def test_a_utf16_utf32_or_cr_only_log_is_refused_whole_in_one_line_naming_the_file(data, encoding):
    good = valid_log(data.draw, max_size=6)
    text = "".join(event_line(obj).decode() for obj in good)
    if encoding == "cr":
        body = text.replace("\n", "\r").encode()
    else:
        body = text.encode(encoding)
    with tempfile.TemporaryDirectory() as tmp:
        path = _file(tmp, body)
        if not text or (encoding in ("utf-16-le", "utf-16-be") and not text.isascii()):
            return  # nothing to recognise: an empty file, or BOM-less UTF-16 of non-ASCII text (not detectable)
        with pytest.raises(LogFileError) as caught:
            load_events(path, on_error="skip")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@FAST
@given(data=st.data(), ahead=st.floats(FUTURE_TOLERANCE_S + 1, 80 * 365 * 86400.0))
def test_an_event_past_the_future_tolerance_is_rejected_alone_and_every_other_event_kept(data, ahead):
    good = [obj for obj in valid_log(data.draw, max_size=6) if expected_event(obj).ts <= NOW]
    far = data.draw(event_objects())
    far["time"] = _iso(NOW + ahead)
    at = data.draw(st.integers(0, len(good)))
    lines = [event_line(obj) for obj in good]
    lines.insert(at, event_line(far))
    with tempfile.TemporaryDirectory() as tmp:
        path = _file(tmp, b"".join(lines))
        report = load_events(path, on_error="skip", now=NOW)
        with LogStore.open(Path(tmp) / "events.db") as store:
            imported = store.import_jsonl(path, now=NOW)
            assert store.events() == report.events
    assert report.events == [expected_event(obj) for obj in good]
    assert [(e.line, e.field) for e in report.errors] == [(at + 1, "time")]
    assert (imported.events, [e.line for e in imported.errors]) == (len(good), [at + 1])


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(round(ts), tz=timezone.utc).isoformat()


@FEW
@given(data=st.data())
def test_importing_a_prefix_then_the_whole_log_stores_it_once_and_counts_the_prefix_present(data):
    good = valid_log(data.draw, max_size=8)
    cut = data.draw(st.integers(0, len(good)))
    whole = b"".join(event_line(obj) for obj in good)
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "first.jsonl"
        first.write_bytes(b"".join(event_line(obj) for obj in good[:cut]))
        with LogStore.open(Path(tmp) / "events.db") as store:
            store.import_jsonl(first, now=READ_IN_2100)
            grown = store.import_jsonl(_file(tmp, whole), now=READ_IN_2100)
            again = store.import_jsonl(_file(tmp, whole), now=READ_IN_2100)
            assert store.events() == [expected_event(obj) for obj in good]
    assert (grown.events, grown.already_present, grown.errors) == (len(good) - cut, cut, [])
    assert (again.events, again.already_present, again.errors) == (0, len(good), [])
