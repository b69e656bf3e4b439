"""Hostile input: every parser a user or a server can feed ends in a typed, explained error or a counted skip.

Property-based (hypothesis) over the event parser, the JSON Lines loader and importer, the SQLite log store, the run
settings and the per-round client instructions: arbitrary bytes, truncated and damaged files, huge lines, NaN and
Infinity, wrong types, any Unicode in prompts, times far in the past or future. Three properties throughout:

- the only exceptions are ``EventError``, ``LogStoreError``, ``ConfigError`` (or the privacy package's
  ``PrivacyConfigError``, which ``settings_from_config`` lets through for cross-group privacy rules) and
  ``InstructionError``; in skip mode a bad line is counted, never raised;
- an accepted event is exactly the event the input describes, and reads back equal (no silent alteration);
- good lines mixed with garbage are all kept in skip mode (no good event lost).

Inputs that once broke a property are kept as explicit tests at the end of each section, with the exact input. A
new one is pinned there by an ``xfail(strict=True)`` test until fixed (it then turns into a failure, XPASS, so the
marker is removed with the fix).
"""

from __future__ import annotations

import copy
import json
import math
import random
import sqlite3
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from protocol.instructions import (
    DataInstructions,
    InstructionError,
    TrainInstructions,
    from_config_items,
    to_config_items,
)
from client.log_store import LogStore, LogStoreError
from model.log.event_log import MAX_LINE_BYTES, load_events, parse_lines, write_events
from model.log.events import FIELDS_BY_KIND, Event
from model.log.log_file import head_problem
from model.log.parsing import MAX_PROMPT_CHARS, EventError, event_to_json_line, parse_event
from model.log.vocab import BPM_MAX, BPM_MIN, EVENT_KINDS
from privacy.record_level import RecordLevelDP
from privacy.errors import PrivacyConfigError
from server.settings import RunSettings, settings_from_config
from validation.config import ConfigError
from tests.helpers import (
    ANY_UNICODE,
    FAST,
    FEW,
    FIELD_VALUES,
    JSON_SCALARS,
    JSON_VALUES,
    OFFSETS_MIN,
    READ_IN_2100,
    ROOT,
    SURROGATES,
    event_line,
    event_objects,
    expected_event,
    valid_log,
)

# ----------------------------------------------------------------------------------------------------- strategies

FIELD_NAMES = ("time", "kind", "genre", "bpm", "direction", "instrument", "enabled", "instruments", "prompt")


@st.composite
def hostile_objects(draw: st.DrawFn) -> object:
    """A valid event with up to three fields replaced by any JSON value, deleted, or added; or any JSON value."""
    if draw(st.integers(0, 5)) == 0:
        return draw(JSON_VALUES)
    obj = draw(event_objects())
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(FIELD_NAMES) | st.text(max_size=6))
        action = draw(st.sampled_from(("replace", "replace", "delete")))
        if action == "delete":
            obj.pop(name, None)
        else:
            obj[name] = draw(JSON_VALUES | st.sampled_from(("Jazz", "1e3", "96", "", " jazz", "piano ", "up\n")))
    return obj


@st.composite
def far_times(draw: st.DrawFn) -> str:
    """A real instant of any year 1-9999 with any offset, or the right shape with any digits: year 0000, month 13,
    24:60:60, offset +99:99 ..."""
    if draw(st.booleans()):
        moment = draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)))
        return moment.replace(tzinfo=timezone(timedelta(minutes=draw(OFFSETS_MIN)))).isoformat()
    digits = lambda n: draw(st.text(st.sampled_from("0123456789"), min_size=n, max_size=n))  # noqa: E731
    text = f"{digits(4)}-{digits(2)}-{digits(2)}T{digits(2)}:{digits(2)}:{digits(2)}"
    if draw(st.booleans()):
        text += "." + digits(draw(st.integers(1, 6)))
    return text + draw(st.sampled_from(("Z", "", f"+{digits(2)}:{digits(2)}", f"-{digits(2)}:{digits(2)}")))


def _is_rejected_alone(raw: bytes) -> bool:
    return not parse_lines([raw], on_error="skip").events


GARBAGE_LINES = (
    st.binary(max_size=120)
    | ANY_UNICODE.map(lambda s: s.encode("utf-8", "surrogatepass"))
    | JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | hostile_objects().map(lambda o: json.dumps(o).encode())
    | st.integers(MAX_LINE_BYTES + 1, 5 * MAX_LINE_BYTES).map(lambda n: b'{"prompt": "' + b"x" * n + b'"}')
    | st.sampled_from((b"NaN", b'{"bpm": Infinity}', b"[[[[[[[[" * 2000, b"9" * 5000, b"\xef\xbb\xbf{}", b"\x00"))
).filter(lambda raw: b"\n" not in raw and head_problem(raw + b"\n") is None)  # a UTF-16 BOM first refuses the file


def _assert_faithful(event: Event, obj: dict) -> None:
    """``event`` is exactly what ``obj`` says, shows the same local wall-clock time, and survives its JSON line."""
    assert event == expected_event(obj)
    assert event.local_time == datetime.fromisoformat(obj["time"])
    assert event.local_time.utcoffset() == datetime.fromisoformat(obj["time"]).utcoffset()
    assert event.local_time.replace(tzinfo=None) == datetime.fromisoformat(obj["time"]).replace(tzinfo=None)
    assert parse_event(json.loads(event_to_json_line(event))) == event


# ---------------------------------------------------------------------------------------------- the event parser

@FAST
@given(obj=event_objects())
def test_every_valid_event_is_parsed_to_exactly_what_it_says_and_round_trips(obj):
    _assert_faithful(parse_event(obj), obj)


@FAST
@given(obj=hostile_objects())
def test_any_json_value_is_an_exact_event_or_an_event_error(obj):
    try:
        event = parse_event(obj)
    except EventError as error:
        assert error.rule and str(error)
        return
    _assert_faithful(event, obj)


@FAST
@given(bpm=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**400), 10**400) | st.booleans()
       | st.text(max_size=5) | st.none())
def test_bpm_outside_20_to_300_or_not_finite_or_not_a_number_is_rejected_naming_bpm(bpm):
    obj = {"time": "2026-11-02T21:14:05+01:00", "kind": "bpm_set", "bpm": bpm, "direction": "up"}
    valid = (isinstance(bpm, (int, float)) and not isinstance(bpm, bool) and not (isinstance(bpm, float) and
             not math.isfinite(bpm)) and BPM_MIN <= bpm <= BPM_MAX)
    if valid:
        assert parse_event(obj).bpm == bpm
    else:
        with pytest.raises(EventError) as caught:
            parse_event(obj)
        assert caught.value.field == "bpm"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_json_numbers_are_a_counted_skip_naming_bpm(literal):
    line = '{"time": "2026-11-02T21:14:05+01:00", "kind": "bpm_set", "bpm": %s, "direction": "up"}' % literal
    report = parse_lines([line], on_error="skip")
    assert not report.events and report.skipped == 1 and report.errors[0].field == "bpm"


@FAST
@given(prompt=st.text(st.characters() | SURROGATES, max_size=MAX_PROMPT_CHARS + 20))
def test_a_prompt_of_any_unicode_is_kept_verbatim_or_rejected_saying_why(prompt):
    obj = {"time": "2026-11-02T21:14:05+01:00", "kind": "generation_requested", "prompt": prompt}
    has_surrogate = any(0xD800 <= ord(c) <= 0xDFFF for c in prompt)
    if has_surrogate or len(prompt) > MAX_PROMPT_CHARS:
        with pytest.raises(EventError) as caught:
            parse_event(obj)
        assert caught.value.field == "prompt"
        return
    event = parse_event(obj)
    assert event.prompt == prompt
    report = parse_lines([json.dumps(obj, ensure_ascii=False).encode("utf-8")], on_error="skip")
    if report.events:  # a prompt of many JSON-escaped characters can pass MAX_LINE_BYTES: then a counted skip
        assert report.events == [event]
    else:
        assert "limit" in report.errors[0].rule


@FAST
@given(time=far_times() | ANY_UNICODE | JSON_VALUES)
def test_a_time_outside_2000_to_2099_or_not_a_real_instant_is_an_event_error(time):
    obj = {"time": time, "kind": "style_chosen", "genre": "jazz"}
    try:
        event = parse_event(obj)
    except EventError as error:
        assert error.field == "time"
        return
    assert 2000 <= event.local_time.year <= 2099
    _assert_faithful(event, obj)


EVENT_TS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**20), 10**20) | st.sampled_from(
    (0.0, -1.0, 946_684_800.0 - 1e-7, 4_102_444_800.0, 1e300, True))
EVENT_OFFSETS = st.integers(-(10**6), 10**6) | OFFSETS_MIN | st.sampled_from(
    (math.nan, math.inf, 60.5, 60.0, 60.0000000001, 1e-57, True))
"""Offsets an event may wrongly carry: a float (even 60.0, or a hair from a whole minute) or a bool is refused."""


@st.composite
def hostile_events(draw: st.DrawFn) -> Event:
    """``Event`` objects as buggy app code might build them: any ts and offset, right or wrong field values."""
    kind = draw(st.sampled_from(EVENT_KINDS) | st.text(max_size=6))
    fields = {}
    for name in FIELDS_BY_KIND.get(kind, ()):
        fields[name] = draw(FIELD_VALUES[name].map(lambda v: tuple(v) if isinstance(v, list) else v) | JSON_SCALARS)
    if draw(st.integers(0, 9)) == 0:
        fields[draw(st.sampled_from(FIELD_NAMES[2:]))] = draw(JSON_SCALARS)
    return Event(ts=draw(EVENT_TS), utc_offset_min=draw(EVENT_OFFSETS), kind=kind, **fields)


@FAST
@given(event=hostile_events())
def test_writing_any_event_object_gives_a_line_that_loads_back_equal_or_an_event_error(event):
    try:
        line = event_to_json_line(event)
    except EventError:
        return
    back = parse_event(json.loads(line))
    assert back.kind == event.kind and back.utc_offset_min == event.utc_offset_min
    assert abs(back.ts - event.ts) <= 5e-7 + 1e-9 * abs(event.ts)  # documented: time is kept to the microsecond
    assert back == Event(**{**{f: getattr(event, f) for f in Event.__slots__}, "ts": back.ts})


@pytest.mark.parametrize("offset", [60.0000000001, 1e-57])
def test_an_offset_that_is_not_a_whole_number_of_minutes_is_refused(offset):
    with pytest.raises(EventError):
        event_to_json_line(Event(ts=1_788_739_200.0, utc_offset_min=offset, kind="style_chosen", genre="jazz"))


# ------------------------------------------------------------------------------------------ the JSON Lines loader

@FAST
@given(lines=st.lists(GARBAGE_LINES | st.binary(max_size=40), max_size=12))
def test_arbitrary_lines_end_in_events_or_counted_skips_never_another_exception(lines):
    report = parse_lines(lines, source="hostile.jsonl", on_error="skip")
    non_blank = sum(1 for raw in lines if raw.strip(b" \t\r\n"))
    assert len(report.events) + report.skipped == non_blank and report.lines_read == len(lines)
    assert all(e.source == "hostile.jsonl" and 1 <= e.line <= len(lines) for e in report.errors)
    if report.errors:
        with pytest.raises(EventError) as caught:
            parse_lines(lines, source="hostile.jsonl", on_error="raise")
        assert caught.value.line == report.errors[0].line


@st.composite
def good_and_garbage(draw: st.DrawFn) -> tuple[list[dict], list[bytes]]:
    """(valid events in time order, the file's lines: those events with garbage lines anywhere between them)."""
    good = valid_log(draw)
    garbage = draw(st.lists(GARBAGE_LINES.filter(_is_rejected_alone) | st.sampled_from((b"", b"  \t", b"\r")),
                            max_size=8))
    lines = [event_line(obj) for obj in good]
    for raw in garbage:
        lines.insert(draw(st.integers(0, len(lines))), raw + b"\n")
    return good, lines


@FAST
@given(case=good_and_garbage())
def test_good_lines_among_garbage_are_all_kept_unchanged_and_each_bad_line_counted(case):
    good, lines = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        path.write_bytes(b"".join(lines))
        report = load_events(path, on_error="skip", now=READ_IN_2100)
        assert report.events == [expected_event(obj) for obj in good]
        assert report.skipped == sum(1 for raw in lines if raw.strip(b" \t\r\n")) - len(good)
        with LogStore.open(Path(tmp) / "events.db") as store:
            imported = store.import_jsonl(path, now=READ_IN_2100)
            assert imported.events == len(good) and imported.skipped == report.skipped
            assert store.events() == report.events


@FAST
@given(data=st.data())
def test_a_truncated_log_keeps_every_complete_line_and_never_alters_the_cut_one(data):
    good = valid_log(data.draw, max_size=6)
    assume(good)
    text = b"".join(event_line(obj) for obj in good)
    cut = data.draw(st.integers(0, len(text)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        path.write_bytes(text[:cut])
        report = load_events(path, on_error="skip", now=READ_IN_2100)
    ends = [len(b"".join(event_line(o) for o in good[: i + 1])) for i in range(len(good))]
    complete = sum(1 for end in ends if end <= cut)
    expected = [expected_event(obj) for obj in good]
    assert report.events[:complete] == expected[:complete]
    partial = report.events[complete:]  # the cut line: rejected, or whole but for its newline
    assert partial in ([], expected[complete: complete + 1])
    assert len(report.events) + report.skipped == complete + (cut not in [0, *ends])


@FEW
@given(events=st.data())
def test_write_then_load_returns_every_event_unchanged_or_write_refuses_and_keeps_the_old_file(events):
    objs = valid_log(events.draw, max_size=4)
    log = [parse_event(obj) for obj in objs]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        path.write_bytes(b"old\n")
        try:
            write_events(path, log)
        except EventError as error:  # only a line past MAX_LINE_BYTES: a prompt of JSON-escaped characters
            assert "limit" in error.rule and path.read_bytes() == b"old\n"
            assert [p.name for p in Path(tmp).iterdir()] == ["log.jsonl"]
            return
        assert load_events(path, now=READ_IN_2100).events == log


def test_a_huge_line_is_skipped_without_losing_its_neighbours(tmp_path):
    first, last = (json.dumps({"time": t, "kind": "style_chosen", "genre": "jazz"}).encode() + b"\n"
                   for t in ("2026-01-01T00:00:00Z", "2026-01-01T00:00:01Z"))
    huge = b'{"time": "2026-01-01T00:00:00Z", "kind": "generation_requested", "prompt": "' + b"a" * 10**7 + b'"}\n'
    path = tmp_path / "log.jsonl"
    path.write_bytes(first + huge + last)
    report = load_events(path, on_error="skip")
    assert [e.ts for e in report.events] == [1767225600.0, 1767225601.0]
    assert report.skipped == 1 and report.errors[0].line == 2 and "the limit is 8192" in report.errors[0].rule


# ------------------------------------------------------------------------------------------- the SQLite log store

@FEW
@given(event=hostile_events())
def test_the_store_keeps_each_accepted_event_as_returned_and_refuses_the_rest_with_event_error(event):
    with tempfile.TemporaryDirectory() as tmp, LogStore.open(Path(tmp) / "events.db") as store:
        try:
            stored = store.append(event)
        except EventError:
            assert store.count() == 0
            return
        assert store.events() == [stored]
        assert abs(stored.ts - event.ts) <= 5e-7 + 1e-9 * abs(event.ts)  # documented: rounded to the microsecond
        assert stored == Event(**{**{f: getattr(event, f) for f in Event.__slots__}, "ts": stored.ts})


def _store_with(path: Path, n: int = 40) -> list[Event]:
    events = [parse_event({"time": f"2026-03-01T10:{i // 60:02d}:{i % 60:02d}+01:00", "kind": "generation_requested",
                           "prompt": f"prompt number {i} ✓" * 3}) for i in range(n)]
    with LogStore.open(path) as store:
        return store.append_many(events)


SQLITE_VALUES = (st.text(max_size=60) | st.binary(max_size=60) | st.integers(-(2**63), 2**63 - 1)
                 | st.floats(allow_nan=False) | event_objects().map(lambda o: json.dumps(o)))


@FEW
@given(edits=st.lists(st.tuples(st.integers(1, 40), st.sampled_from(("json_line", "kind", "ts", "utc_offset_min")),
                                SQLITE_VALUES), min_size=1, max_size=4))
def test_rows_edited_by_hand_to_any_value_are_counted_and_the_other_rows_read_unchanged(edits):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.db"
        stored = _store_with(path)
        conn = sqlite3.connect(path, isolation_level=None)
        for row, column, value in edits:
            conn.execute(f"UPDATE events SET {column} = ? WHERE id = ?", (value, row))
        conn.close()
        with LogStore.open(path, create=False) as store:
            report, stats = store.read(), store.stats()
    touched = {row for row, column, _ in edits if column in ("json_line", "kind", "ts")}
    untouched = [e for i, e in enumerate(stored, start=1) if i not in touched]
    assert report.lines_read == 40 and len(report.events) + report.skipped == 40
    assert stats["unreadable_rows"] == report.skipped
    assert all(e in report.events for e in untouched)
    assert all(e in stored or e in _events_in(edits) for e in report.events)


def _events_in(edits: list[tuple]) -> list[Event]:
    """The events that edited-in values describe (a row may be edited into another valid event)."""
    out = []
    for *_, value in edits:
        try:
            out.append(parse_event(json.loads(value)))
        except (TypeError, ValueError):
            pass
    return out


@FEW
@given(blob=st.binary(max_size=3000) | st.binary(max_size=3000).map(lambda b: b"SQLite format 3\x00" + b))
def test_a_file_of_arbitrary_bytes_is_refused_with_log_store_error_and_left_unchanged(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.db"
        path.write_bytes(blob)
        # a file of 0 or 1 bytes too, which SQLite takes for an empty database
        with pytest.raises(LogStoreError) as caught, LogStore.open(path, create=False) as store:
            store.read()
        assert str(path) in str(caught.value) and path.read_bytes() == blob


@pytest.mark.parametrize("blob", [b"", b"x", b"\x00"])
def test_an_empty_or_one_byte_file_is_refused_without_create_and_left_unchanged(tmp_path, blob):
    path = tmp_path / "events.db"
    path.write_bytes(blob)
    with pytest.raises(LogStoreError, match="left unchanged"):
        LogStore.open(path, create=False)
    assert path.read_bytes() == blob and [p.name for p in tmp_path.iterdir()] == ["events.db"]


def test_a_row_with_invalid_utf8_is_counted_and_the_good_rows_still_read(tmp_path):
    path = tmp_path / "events.db"
    stored = _store_with(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE events SET json_line = CAST(X'7B22FF227D' AS TEXT) WHERE id = 3")  # {"\xff"}
    conn.close()
    with LogStore.open(path, create=False) as store:
        report = store.read()
    assert report.skipped == 1 and report.events == stored[:2] + stored[3:]


def test_a_damaged_store_file_is_refused_with_log_store_error_or_its_damaged_rows_counted(tmp_path):
    """Thirty random damages (1-20 flipped bits past the 100-byte header, every third one also cut short) from a fixed
    seed, so that the test is deterministic (hypothesis's derandomized examples change with the modules loaded).
    Only exception types and counts are checked: SQLite keeps no checksums, so a flip inside a row's text can make
    it another valid event (bpm 96 -> 97), which no reader can tell without a per-row checksum."""
    source = tmp_path / "whole.db"
    _store_with(source, n=300)
    data = source.read_bytes()
    rnd = random.Random(0)
    for case in range(30):
        damaged = bytearray(data)
        for _ in range(rnd.randrange(1, 21)):
            damaged[rnd.randrange(100, len(damaged))] ^= 1 << rnd.randrange(8)
        if case % 3 == 2:
            damaged = damaged[: rnd.randrange(len(damaged))]
        path = tmp_path / f"damaged-{case}.db"
        path.write_bytes(bytes(damaged))
        try:
            with LogStore.open(path, create=False) as store:
                report = store.read()
        except LogStoreError:
            continue
        assert len(report.events) + report.skipped == report.lines_read


# ---------------------------------------------------------------------------------- run settings and instructions

def _composed_config() -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config"), resolve=True)


BASE_CONFIG = _composed_config()


def _leaf_paths(node: object, prefix: tuple = ()) -> list[tuple]:
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in _leaf_paths(value, (*prefix, key))] or [prefix]
    return [prefix]


CONFIG_PATHS = [p for p in _leaf_paths(BASE_CONFIG) if p and p[0] != "hydra"]
CONFIG_VALUES = (st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.integers(-(10**400), 10**400)
                 | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
                 | st.lists(st.integers(), max_size=2)
                 | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
"""Wrong types, NaN, Infinity, huge and negative numbers, ints too large for a float."""


@FAST
@given(edits=st.lists(st.tuples(st.sampled_from(CONFIG_PATHS) | st.lists(st.text(max_size=5), min_size=1, max_size=3)
                                .map(tuple), CONFIG_VALUES), min_size=1, max_size=3))
@example(edits=[(("population", "num_users"), 10**400)])  # once overflowed 1 / num_users in the privacy checks
def test_any_edited_config_gives_settings_or_a_config_error_naming_the_key(edits):
    cfg = copy.deepcopy(BASE_CONFIG)
    for path, value in edits:
        node = cfg
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    try:
        assert isinstance(settings_from_config(cfg), RunSettings)
    except (ConfigError, PrivacyConfigError) as error:
        assert str(error)


def _instruction_items() -> dict:
    record = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=10.0, delta=1e-3)
    return to_config_items(TrainInstructions(round=3, seed=0, data=DataInstructions(), clipping_norm=0.5,
                                             record=record, device_dir="/tmp/devices"))


INSTRUCTION_ITEMS = _instruction_items()
CONFIG_RECORD_VALUES = (st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=True, allow_infinity=True)
                        | st.text(max_size=8) | st.booleans() | st.binary(max_size=4)
                        | st.lists(st.integers(), max_size=2))


def _type_name(value: object) -> str:
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


@FAST
@given(changes=st.lists(st.tuples(st.sampled_from(sorted(INSTRUCTION_ITEMS)), CONFIG_RECORD_VALUES), max_size=3),
       extra=st.dictionaries(st.text(max_size=12), CONFIG_RECORD_VALUES, max_size=2),
       dropped=st.lists(st.sampled_from(sorted(INSTRUCTION_ITEMS)), max_size=2))
def test_config_items_of_a_wrong_type_unknown_or_missing_are_an_instruction_error(changes, extra, dropped):
    """What a (possibly hostile) server sends a client; values of the right type but out of range are tested below."""
    items = dict(INSTRUCTION_ITEMS)
    for key, value in changes:
        # a right-typed value out of range is tested below (an int widened to a float may not read back equal)
        assume(_type_name(value) != _type_name(INSTRUCTION_ITEMS[key]))
        items[key] = value
    items.update(extra)  # a key may make a scalar a group of keys: an InstructionError
    for key in dropped:
        items.pop(key, None)
    try:
        instructions = from_config_items(items)
    except InstructionError as error:
        assert str(error)
        return
    sent_back = to_config_items(instructions)
    assert all(key in sent_back and sent_back[key] == value for key, value in items.items())


def test_a_scalar_where_a_group_of_keys_is_expected_is_an_instruction_error():
    with pytest.raises(InstructionError):
        from_config_items({"round": 1, "seed": 0, "model": 5, "model.hidden-size": 3})


def test_a_value_out_of_range_in_config_items_is_an_instruction_error():
    with pytest.raises(InstructionError, match="epochs"):
        from_config_items({**INSTRUCTION_ITEMS, "train.epochs": 0})


@pytest.mark.parametrize("parse", [
    lambda: settings_from_config({**BASE_CONFIG, "train": {**BASE_CONFIG["train"], "lr": 10**400}}),
    lambda: from_config_items({**INSTRUCTION_ITEMS, "train.lr": 10**400}),
], ids=["settings", "instructions"])
def test_an_integer_too_large_for_a_float_field_is_a_config_or_instruction_error(parse):
    with pytest.raises((ConfigError, InstructionError)):
        parse()


@pytest.mark.parametrize("path,value", [
    (("privacy", "clipping_norm"), math.inf),  # noise z*C = inf: the first DP round turns the model to inf/NaN
    (("privacy", "target_epsilon"), math.inf),  # calibrates z=10 silently; "no budget" is privacy=none
    (("train", "lr"), math.inf),
    (("simulation", "round_timeout_s"), math.inf),
    (("simulation", "node_wait_s"), -1.0),  # never validated
    (("strategy", "tau"), math.nan),  # FedAdam's tau/beta_1/beta_2 are never validated
    (("population", "seed"), -1),  # accepted here, refused by PopulationConfig in every client
])
def test_a_non_finite_or_unusable_setting_is_refused_before_training(path, value):
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg[path[0]][path[1]] = value
    with pytest.raises((ConfigError, PrivacyConfigError)):
        settings_from_config(cfg)


# --------------------------------------------------------------------------------------------------- the CLI

def _logs(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "client.logs", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)


def _garbage_file(tmp_path: Path) -> Path:
    rnd = random.Random(7)
    path = tmp_path / "garbage.jsonl"
    good = b'{"time": "2026-11-02T21:14:05+01:00", "kind": "style_chosen", "genre": "jazz"}\n'
    chunks = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))) for _ in range(40)]
    path.write_bytes(good + b"\n".join(chunks) + b"\n" + b"x" * 100_000 + b"\n\xff\xfe\x00" + good)
    return path


def _damaged_store(tmp_path: Path) -> Path:
    path = tmp_path / "damaged.db"
    _store_with(path)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE events SET json_line = CAST(X'7B22FF227D' AS TEXT) WHERE id = 3")
    conn.close()
    return path


CLI_CASES = {
    "validate garbage": lambda t: ["validate", _garbage_file(t)],
    "import garbage": lambda t: ["import", _garbage_file(t), "--db", t / "events.db"],
    "stats of random bytes": lambda t: ["stats", "--db", _garbage_file(t)],
    "stats of a damaged store": lambda t: ["stats", "--db", _damaged_store(t)],
    "import into a damaged store": lambda t: ["import", _garbage_file(t), "--db", _damaged_store(t)],
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_cli_never_prints_a_traceback_on_garbage_files(tmp_path, case):
    run = _logs(*CLI_CASES[case](tmp_path))
    assert run.returncode in (0, 1, 2)
    assert "Traceback" not in run.stdout + run.stderr
    if run.returncode == 2:
        assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1
    if case == "validate garbage":
        report = load_events(tmp_path / "garbage.jsonl", on_error="skip")
        assert run.returncode == 1 and report.skipped > 40 and len(report.events) == 1
        assert run.stdout.rstrip().endswith(f"1 valid event, {report.skipped} invalid lines")
