"""Loading and writing JSON Lines logs: line numbers, skip-and-count, raise mode, byte limits, order, atomic writes."""

from __future__ import annotations

import json
import os
import stat
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import pytest

from model.log.event_log import MAX_LINE_BYTES, LoadReport, load_events, parse_lines, write_events
from model.log.events import Event
from model.log.log_file import LogFileError
from model.log.parsing import MAX_PROMPT_CHARS, MISSING, EventError, parse_event
from model.log.time_rules import FUTURE_TOLERANCE_S
from model.log.vocab import EVENT_KINDS

LINES = [  # one event per kind, in time order
    '{"time": "2026-11-02T21:13:50+01:00", "kind": "generation_requested", "prompt": "something relaxing"}',
    '{"time": "2026-11-02T21:14:05+01:00", "kind": "segment_kept", "genre": "jazz", "bpm": 96, '
    '"instruments": ["piano", "bass"]}',
    '{"time": "2026-11-02T21:14:40+01:00", "kind": "segment_redone", "genre": "jazz", "bpm": 96.5, "instruments": []}',
    '{"time": "2026-11-02T21:15:10+01:00", "kind": "bpm_set", "bpm": 88, "direction": "down"}',
    '{"time": "2026-11-02T21:15:30+01:00", "kind": "instrument_toggled", "instrument": "drums", "enabled": false}',
    '{"time": "2026-11-02T21:16:00+01:00", "kind": "style_chosen", "genre": "classical"}',
]


def _write_bytes(tmp_path: Path, *lines: bytes | str) -> Path:
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines))
    return path


def _line_at(time: str) -> str:
    return json.dumps({"time": time, "kind": "style_chosen", "genre": "pop"})


# --- happy path --------------------------------------------------------------------------------------------------

def test_valid_log_of_every_kind_loads_in_file_order(tmp_path):
    report = load_events(_write_bytes(tmp_path, *LINES))
    assert [e.kind for e in report.events] == [json.loads(x)["kind"] for x in LINES]
    assert set(EVENT_KINDS) == {e.kind for e in report.events}
    assert (report.errors, report.skipped, report.lines_read) == ([], 0, len(LINES))


def test_write_then_load_round_trips_every_kind(tmp_path):
    events = [parse_event(json.loads(x)) for x in LINES]
    events.append(Event(ts=events[-1].ts + 0.000001, utc_offset_min=-330, kind="generation_requested",
                        prompt="🎷" * MAX_PROMPT_CHARS))
    path = tmp_path / "out.jsonl"
    assert write_events(path, iter(events)) == len(events)
    assert load_events(path).events == events
    assert path.read_bytes().count(b"\n") == len(events)


def test_write_of_no_events_makes_an_empty_log(tmp_path):
    path = tmp_path / "empty.jsonl"
    assert write_events(path, []) == 0
    assert path.read_bytes() == b""
    assert load_events(path) == LoadReport(events=[], errors=[], lines_read=0)


@pytest.mark.parametrize("line", ["", "   ", "\t", "\r", " \t \r"])
def test_blank_lines_are_skipped_without_error_but_counted(tmp_path, line):
    report = load_events(_write_bytes(tmp_path, line, LINES[0], line, LINES[1], line))
    assert (len(report.events), report.skipped, report.lines_read) == (2, 0, 5)


def test_parse_lines_accepts_str_and_bytes_with_or_without_newline():
    report = parse_lines([LINES[0], LINES[1].encode() + b"\n", LINES[2] + "\n", LINES[3].encode()])
    assert (len(report.events), report.skipped) == (4, 0)


def test_parse_lines_accepts_crlf_line_ends():
    assert len(parse_lines([x + "\r\n" for x in LINES]).events) == len(LINES)


# --- skip and count ----------------------------------------------------------------------------------------------

def test_skip_mode_keeps_every_good_event_around_corrupted_lines(tmp_path):
    path = _write_bytes(
        tmp_path,
        LINES[0],
        b'{"time": "2026-11-02T21:14:00+01:00", "kind": "style_chosen", "genre": "jazz\xff\xfe"}',  # bad UTF-8
        LINES[1],
        '{"time": "2026-11-02T21:14:06+01:00", "kind": "style_ch',  # truncated JSON
        LINES[2],
        "x" * (MAX_LINE_BYTES * 40),  # oversize
        LINES[3],
        '{"time": "2026-11-02T21:15:20+01:00", "kind": "bpm_set", "bpm": 400, "direction": "up"}',
        LINES[4],
        LINES[5],
    )
    report = load_events(path, on_error="skip")
    assert [e.kind for e in report.events] == [json.loads(x)["kind"] for x in LINES]
    assert [e.line for e in report.errors] == [2, 4, 6, 8]
    assert all(e.source == str(path) for e in report.errors)
    assert [e.field for e in report.errors] == [None, None, None, "bpm"]
    assert (report.skipped, report.lines_read) == (4, 10)
    assert report.summary() == f"6 events loaded, 4 lines skipped (first: {report.errors[0]})"


def test_raise_mode_stops_at_the_first_bad_line_with_its_number(tmp_path):
    bad = '{"time": "2026-11-02T21:14:10+01:00", "kind": "bpm_set", "bpm": "96", "direction": "up"}'
    path = _write_bytes(tmp_path, LINES[0], LINES[1], "", bad, "not json at all")
    with pytest.raises(EventError) as caught:
        load_events(path)
    err = caught.value
    assert (err.line, err.source, err.field, err.value) == (4, str(path), "bpm", "96")
    assert str(err).startswith(f"{path}:4: field 'bpm' = '96': BPM must be a number between 20 and 300")


def test_invalid_utf8_line_is_rejected_naming_the_line(tmp_path):
    raw = b'{"kind": "style_chosen", "genre": "caf\xe9"}'
    with pytest.raises(EventError) as caught:
        load_events(_write_bytes(tmp_path, LINES[0], raw))
    err = caught.value
    assert (err.line, err.field, err.value) == (2, None, raw)
    assert err.rule == "line must be valid UTF-8 (invalid continuation byte at byte 38)."


@pytest.mark.parametrize(("text", "json_message"), [
    ('{"kind": "style_chosen",}', "Expecting property name enclosed in double quotes at column 25"),
    ("{'kind': 'style_chosen'}", "Expecting property name enclosed in double quotes at column 2"),
    (LINES[0] + " trailing", "Extra data at column"),
    ("\ufeff" + LINES[0], "Unexpected UTF-8 BOM"),
])
def test_invalid_json_is_rejected_with_json_message(text, json_message):
    with pytest.raises(EventError) as caught:
        parse_lines(["", text], source="log.jsonl")
    err = caught.value
    assert (err.line, err.field, err.value) == (2, None, text)
    assert err.rule.startswith("line must be valid JSON (") and json_message in err.rule


@pytest.mark.parametrize("text", ["[" * 4000 + "]" * 4000, '{"bpm": ' + "9" * 5000 + "}"])
def test_json_beyond_python_limits_is_an_event_error_not_a_crash(text):
    report = parse_lines([LINES[0], text, LINES[1]], on_error="skip")
    assert (len(report.events), [e.line for e in report.errors]) == (2, [2])
    assert report.errors[0].rule.startswith("line must be valid JSON within Python's limits (")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected_when_loading(tmp_path, literal):
    line = f'{{"time": "2026-11-02T21:15:10+01:00", "kind": "bpm_set", "bpm": {literal}, "direction": "up"}}'
    report = load_events(_write_bytes(tmp_path, LINES[0], line), on_error="skip")
    assert ([e.line for e in report.errors], report.errors[0].field) == ([2], "bpm")
    assert "NaN and Infinity are not allowed" in report.errors[0].rule


# --- line size ---------------------------------------------------------------------------------------------------

def test_oversize_line_is_rejected_stating_size_and_limit(tmp_path):
    path = _write_bytes(tmp_path, LINES[0], "y" * 151, LINES[1])
    report = load_events(path, on_error="skip", max_line_bytes=150)
    err = report.errors[0]
    assert (err.line, err.field, err.value) == (2, None, b"y" * 100)  # the value kept is the line's start
    assert err.rule == "line is 151+ bytes; the limit is 150."
    assert len(report.events) == 2


def test_line_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not(tmp_path):
    limit = len(LINES[0].encode())
    assert len(load_events(_write_bytes(tmp_path, LINES[0]), max_line_bytes=limit).events) == 1
    with pytest.raises(EventError, match=rf"line is {limit + 1}\+ bytes; the limit is {limit}\."):
        load_events(_write_bytes(tmp_path, LINES[0] + " "), max_line_bytes=limit)


def test_oversize_line_is_never_held_whole_in_memory(tmp_path):
    path = _write_bytes(tmp_path, LINES[0], b"z" * 20_000_000, LINES[1])
    tracemalloc.start()
    try:
        report = load_events(path, on_error="skip")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(report.events), report.skipped) == (2, 1)
    assert peak < 1_000_000


def test_oversize_last_line_without_newline_is_rejected(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(LINES[0].encode() + b"\n" + b"w" * (MAX_LINE_BYTES + 500))
    report = load_events(path, on_error="skip")
    assert (len(report.events), [e.line for e in report.errors], report.lines_read) == (1, [2], 2)


# --- time order --------------------------------------------------------------------------------------------------

def test_time_going_backwards_is_rejected_naming_the_previous_time(tmp_path):
    path = _write_bytes(tmp_path, _line_at("2026-11-02T21:14:05+01:00"), _line_at("2026-11-02T20:14:04Z"))
    with pytest.raises(EventError) as caught:
        load_events(path)
    err = caught.value
    assert (err.line, err.field, err.value) == (2, "time", "2026-11-02T20:14:04Z")
    assert err.rule == "time must not go backwards; the previous event is at 2026-11-02T21:14:05+01:00."


def test_order_is_by_utc_so_equal_times_and_later_utc_with_earlier_wall_clock_pass():
    times = ["2026-11-02T21:00:00+01:00", "2026-11-02T20:00:00Z", "2026-11-02T20:30:00+00:00"]
    report = parse_lines([_line_at(t) for t in times])
    assert (len(report.events), report.skipped) == (3, 0)


def test_order_is_checked_against_the_last_accepted_event_only():
    times = ["2026-11-02T10:00:00Z", "2026-11-02T09:00:00Z", "2026-11-02T09:30:00Z", "2026-11-02T10:00:01Z"]
    lines = [_line_at(times[0]), _line_at(times[1]), '{"kind": "bpm_set"}', _line_at(times[2]), _line_at(times[3])]
    report = parse_lines(lines, on_error="skip")
    assert [e.local_time.isoformat() for e in report.events] == ["2026-11-02T10:00:00+00:00",
                                                                 "2026-11-02T10:00:01+00:00"]
    assert [(e.line, e.field) for e in report.errors] == [(2, "time"), (3, "time"), (4, "time")]
    assert report.errors[1].value is MISSING


# --- options and report ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "message"), [
    ({"on_error": "ignore"}, "on_error must be 'raise' or 'skip'. Found 'ignore'."),
    ({"max_line_bytes": 0}, "max_line_bytes must be a positive integer. Found 0."),
    ({"max_line_bytes": True}, "max_line_bytes must be a positive integer. Found True."),
])
def test_invalid_options_are_rejected_stating_the_rule(tmp_path, options, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_events(tmp_path / "never-opened.jsonl", **options)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        parse_lines([], **options)


def test_summary_uses_singular_and_plural():
    event = parse_event(json.loads(LINES[0]))
    assert LoadReport([event], [], 1).summary() == "1 event loaded, 0 lines skipped"
    err = EventError("rule.", field="bpm", value=1, line=2, source="a.jsonl")
    expected = "0 events loaded, 1 line skipped (first: a.jsonl:2: field 'bpm' = 1: rule.)"
    assert LoadReport([], [err], 2).summary() == expected


# --- atomic, checked writes --------------------------------------------------------------------------------------

def test_write_refuses_backwards_time_and_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("old contents\n")
    first, second = parse_event(json.loads(LINES[1])), parse_event(json.loads(LINES[0]))
    with pytest.raises(EventError) as caught:
        write_events(path, [first, second])
    assert (caught.value.line, caught.value.source, caught.value.field) == (2, str(path), "time")
    assert path.read_text() == "old contents\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_write_refuses_an_invalid_event_naming_its_position(tmp_path):
    good = parse_event(json.loads(LINES[0]))
    bad = Event(ts=good.ts + 1, utc_offset_min=60, kind="bpm_set", bpm=5.0, direction="up")
    with pytest.raises(EventError) as caught:
        write_events(tmp_path / "log.jsonl", [good, bad])
    assert (caught.value.line, caught.value.field, caught.value.value) == (2, "bpm", 5.0)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_a_line_the_loader_would_reject_as_too_long(tmp_path):
    event = Event(ts=1793650445.0, utc_offset_min=0, kind="generation_requested", prompt="\x00" * MAX_PROMPT_CHARS)
    with pytest.raises(EventError, match=rf"the event's line would be \d+ bytes; the limit is {MAX_LINE_BYTES}\."):
        write_events(tmp_path / "log.jsonl", [event])


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_written_log_is_readable_by_its_owner_only(tmp_path):
    path = tmp_path / "log.jsonl"
    write_events(path, [parse_event(json.loads(LINES[0]))])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# --- issue 16: duplicate keys, far-future times, BOMs, line ends and encodings -------------------------------------

def test_a_duplicate_key_is_a_skipped_line_naming_the_key_never_last_one_wins(tmp_path):
    dup = '{"time": "2026-11-02T21:14:06+01:00", "kind": "bpm_set", "bpm": 500, "bpm": 96, "direction": "up"}'
    path = _write_bytes(tmp_path, LINES[1], dup, LINES[2])
    report = load_events(path, on_error="skip")
    assert [e.line for e in report.errors] == [2] and len(report.events) == 2
    assert report.errors[0].field == "bpm" and "appears more than once" in report.errors[0].rule
    assert all(e.kind != "bpm_set" for e in report.events)


def test_a_duplicate_key_in_a_nested_object_is_also_refused():
    report = parse_lines(['{"time": "2026-11-02T21:14:06Z", "kind": "style_chosen", "genre": {"a": 1, "a": 2}}'],
                         on_error="skip")
    assert report.skipped == 1 and report.errors[0].field == "a"


NOW = 1_796_000_000.0  # 2026-11-30T00:53:20Z, a fixed "now" for the future rule


def test_an_event_beyond_the_future_tolerance_is_rejected_alone_and_later_lines_are_kept():
    lines = [_line_at("2026-11-02T10:00:00Z"), _line_at("2099-01-01T00:00:00Z"), _line_at("2026-11-02T10:00:01Z"),
             _line_at("2026-11-03T10:00:00Z")]
    report = parse_lines(lines, on_error="skip", now=NOW)
    assert len(report.events) == 3 and [(e.line, e.field) for e in report.errors] == [(2, "time")]
    assert f"{FUTURE_TOLERANCE_S / 3600:g} hours" in report.errors[0].rule
    assert "clock" in report.errors[0].rule


def test_an_event_within_the_tolerance_is_accepted_and_one_past_it_is_not():
    edge = datetime.fromtimestamp(NOW + FUTURE_TOLERANCE_S, tz=timezone.utc).isoformat()
    past_edge = datetime.fromtimestamp(NOW + FUTURE_TOLERANCE_S + 1, tz=timezone.utc).isoformat()
    assert parse_lines([_line_at(edge)], now=NOW).skipped == 0
    assert parse_lines([_line_at(past_edge)], now=NOW, on_error="skip").skipped == 1


def test_load_events_checks_the_future_against_the_current_time(tmp_path):
    path = _write_bytes(tmp_path, _line_at("2099-01-01T00:00:00Z"))
    assert load_events(path, on_error="skip").skipped == 1


def test_a_utf8_bom_is_accepted_and_the_first_event_kept(tmp_path):
    path = _write_bytes(tmp_path, b"\xef\xbb\xbf" + LINES[0].encode(), LINES[1])
    report = load_events(path)
    assert (len(report.events), report.skipped) == (2, 0)


def test_a_bom_after_the_first_line_is_still_an_error():
    assert parse_lines([LINES[0], "\ufeff" + LINES[1]], on_error="skip").skipped == 1


@pytest.mark.parametrize(("data", "words"), [
    ("\n".join(LINES[:3]).encode("utf-16"), "UTF-16"),
    ("\n".join(LINES[:3]).encode("utf-16-le"), "UTF-16"),
    ("\n".join(LINES[:3]).encode("utf-16-be"), "UTF-16"),
    ("\n".join(LINES[:3]).encode("utf-32"), "UTF-32"),
    ("\r".join(LINES[:3]).encode() + b"\r", "CR"),
])
def test_a_utf16_or_cr_only_file_is_refused_at_once_in_one_message(tmp_path, data, words):
    path = tmp_path / "log.jsonl"
    path.write_bytes(data)
    with pytest.raises(LogFileError) as caught:
        load_events(path, on_error="skip")
    message = str(caught.value)
    assert words in message and str(path) in message and "\n" not in message


def test_crlf_files_and_a_stray_cr_inside_json_whitespace_still_load(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes("\r\n".join(LINES).encode() + b"\r\n")
    assert len(load_events(path).events) == len(LINES)
