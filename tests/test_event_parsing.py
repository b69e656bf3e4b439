"""Every rule of ``model.log.parsing``: each bad value is rejected naming its field, the value and the rule.

Rule tests go through ``parse_lines`` with the bad object on line 2 (after a blank line), so each also checks that the
error carries its line number and source.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from model.log.event_log import parse_lines
from model.log.parsing import (
    MAX_PROMPT_CHARS,
    MISSING,
    EventError,
    event_to_json_line,
    parse_event,
)
from model.log.events import FIELDS_BY_KIND, Event
from model.log.vocab import EVENT_KINDS

TIME = "2026-11-02T21:14:05+01:00"
VALID: dict[str, dict] = {
    "style_chosen": {"time": TIME, "kind": "style_chosen", "genre": "jazz"},
    "bpm_set": {"time": TIME, "kind": "bpm_set", "bpm": 88, "direction": "down"},
    "instrument_toggled": {"time": TIME, "kind": "instrument_toggled", "instrument": "piano", "enabled": True},
    "segment_kept": {"time": TIME, "kind": "segment_kept", "genre": "jazz", "bpm": 96, "instruments": ["piano"]},
    "segment_redone": {"time": TIME, "kind": "segment_redone", "genre": "rock", "bpm": 140.5, "instruments": []},
    "generation_requested": {"time": TIME, "kind": "generation_requested", "prompt": "something relaxing"},
}


def _with(base: str, **changes: object) -> dict:
    return {**VALID[base], **changes}


def _without(kind: str, field: str) -> dict:
    return {k: v for k, v in VALID[kind].items() if k != field}


def _reject(obj: object) -> EventError:
    """The error for ``obj`` placed on line 2 of log.jsonl; asserts the location is attached."""
    with pytest.raises(EventError) as caught:
        parse_lines(["\n", json.dumps(obj, ensure_ascii=False)], source="log.jsonl")
    assert (caught.value.line, caught.value.source) == (2, "log.jsonl")
    assert str(caught.value).startswith("log.jsonl:2: ")
    return caught.value


def _reject_text(text: str) -> EventError:
    with pytest.raises(EventError) as caught:
        parse_lines(["\n", text], source="log.jsonl")
    assert caught.value.line == 2
    return caught.value


# --- the object and its kind -------------------------------------------------------------------------------------

@pytest.mark.parametrize("obj", [[1, 2], "jazz", 3, None, True])
def test_non_object_is_rejected_with_the_value(obj):
    err = _reject(obj)
    assert (err.field, err.value) == (None, obj)
    assert err.rule == "an event must be a JSON object ({...})."


def test_missing_kind_is_rejected_listing_kinds():
    err = _reject(_without("style_chosen", "kind"))
    assert (err.field, err.value) == ("kind", MISSING)
    assert "needs a kind" in err.rule and all(k in err.rule for k in EVENT_KINDS)
    assert "field 'kind' is missing: " in str(err)


@pytest.mark.parametrize("kind", ["play", 5, None, ["bpm_set"]])
def test_unknown_kind_is_rejected_listing_allowed_kinds(kind):
    err = _reject(_with("bpm_set", kind=kind))
    assert (err.field, err.value) == ("kind", kind)
    assert err.rule == f"kind must be one of: {', '.join(EVENT_KINDS)}."


def test_kind_in_wrong_case_is_rejected_with_a_suggestion():
    err = _reject(_with("bpm_set", kind="BPM_SET"))
    assert (err.field, err.value) == ("kind", "BPM_SET")
    assert err.rule.endswith("Did you mean 'bpm_set'?")


# --- time --------------------------------------------------------------------------------------------------------

def test_missing_time_is_rejected():
    err = _reject(_without("bpm_set", "time"))
    assert (err.field, err.value) == ("time", MISSING)
    assert "needs a time" in err.rule


@pytest.mark.parametrize("time", ["2026-11-02T21:14:05", "2026-11-02T21:14:05.250"])
def test_naive_time_is_rejected_asking_for_the_offset(time):
    err = _reject(_with("style_chosen", time=time))
    assert (err.field, err.value) == ("time", time)
    assert "needs an explicit UTC offset" in err.rule and "add it" in err.rule


@pytest.mark.parametrize("time", [
    1762114445, None, "yesterday", "2026-11-02", "20261102T211405Z", "2026-11-02 21:14:05Z", "2026-11-02T21:14Z",
    "2026-11-02T21:14:05.1234567Z", "2026-11-02T21:14:05+0100", "2026-11-02T21:14:05+01:00:30", " " + TIME,
    "２０２６-11-02T21:14:05Z", "2026-11-02t21:14:05z",
])
def test_time_not_in_iso_8601_with_offset_form_is_rejected(time):
    err = _reject(_with("style_chosen", time=time))
    assert (err.field, err.value) == ("time", time)
    assert err.rule.startswith("time must be an ISO 8601 string YYYY-MM-DDTHH:MM:SS[.ffffff] with a UTC offset")


@pytest.mark.parametrize("time", ["2026-02-30T10:00:00Z", "2026-11-02T24:00:00Z", "2026-11-02T10:00:00+25:00"])
def test_impossible_calendar_time_is_rejected(time):
    err = _reject(_with("style_chosen", time=time))
    assert (err.field, err.value) == ("time", time)
    assert err.rule.startswith("time must be a real calendar date and clock time")


@pytest.mark.parametrize("time", ["1999-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "2100-01-01T00:00:00Z",
                                  "9999-12-31T23:59:59+14:00"])
def test_time_outside_years_2000_to_2099_is_rejected(time):
    err = _reject(_with("style_chosen", time=time))
    assert (err.field, err.value) == ("time", time)
    assert err.rule == "time must be in the years 2000 to 2099."


@pytest.mark.parametrize(("time", "utc", "offset"), [
    ("2026-11-02T21:14:05+01:00", datetime(2026, 11, 2, 20, 14, 5, tzinfo=timezone.utc), 60),
    ("2026-11-02T21:14:05Z", datetime(2026, 11, 2, 21, 14, 5, tzinfo=timezone.utc), 0),
    ("2026-11-02T21:14:05.250-05:30", datetime(2026, 11, 3, 2, 44, 5, 250000, tzinfo=timezone.utc), -330),
])
def test_time_becomes_utc_seconds_and_offset_minutes(time, utc, offset):
    event = parse_event(_with("style_chosen", time=time))
    assert (event.ts, event.utc_offset_min) == (utc.timestamp(), offset)
    assert isinstance(event.ts, float) and isinstance(event.utc_offset_min, int)


# --- which fields ------------------------------------------------------------------------------------------------

def test_unknown_field_is_rejected_naming_it_and_the_allowed_ones():
    err = _reject(_with("bpm_set", genre="jazz"))
    assert (err.field, err.value) == ("genre", "jazz")
    assert err.rule == "only these fields are allowed for kind 'bpm_set': time, kind, bpm, direction."


@pytest.mark.parametrize(("kind", "field"), [(k, f) for k, fs in FIELDS_BY_KIND.items() for f in fs])
def test_missing_required_field_is_rejected(kind, field):
    err = _reject(_without(kind, field))
    assert (err.field, err.value) == (field, MISSING)
    assert err.rule == f"kind {kind!r} requires the fields {', '.join(FIELDS_BY_KIND[kind])}."


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_valid_event_of_every_kind_is_accepted(kind):
    event = parse_event(VALID[kind])
    assert event.kind == kind
    for name in FIELDS_BY_KIND[kind]:
        assert getattr(event, name) is not None


# --- field values ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("genre", "hint"), [("Jazz", "jazz"), ("HIPHOP", "hiphop"), ("metal", None),
                                             ("hip-hop", None), (3, None), (None, None)])
def test_genre_outside_vocabulary_is_rejected_with_case_hint(genre, hint):
    err = _reject(_with("style_chosen", genre=genre))
    assert (err.field, err.value) == ("genre", genre)
    assert err.rule.startswith("genre must be one of: pop, rock, classical, electronic, jazz, folk, rnb, hiphop.")
    assert err.rule.endswith(f"Did you mean {hint!r}?") if hint else "Did you mean" not in err.rule


@pytest.mark.parametrize("bpm", [19.99, 300.01, 400, 0, -96, 10**400])
def test_bpm_outside_20_to_300_is_rejected_naming_field_and_rule(bpm):
    err = _reject(_with("bpm_set", bpm=bpm))
    assert (err.field, err.value) == ("bpm", bpm)
    assert err.rule == "BPM must be a number between 20 and 300."


def test_bpm_error_message_reads_like_the_format_spec():
    err = _reject(_with("bpm_set", bpm=400))
    assert str(err) == "log.jsonl:2: field 'bpm' = 400: BPM must be a number between 20 and 300."


@pytest.mark.parametrize("bpm", [True, False, "96", "96.0", None, [96], {"value": 96}])
def test_bpm_that_is_not_a_json_number_is_rejected(bpm):
    err = _reject(_with("bpm_set", bpm=bpm))
    assert (err.field, err.value) == ("bpm", bpm)
    assert err.rule == "BPM must be a number between 20 and 300, written as a JSON number (not a string or boolean)."


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_bpm_nan_or_infinity_is_rejected(literal):
    err = _reject_text(f'{{"time": "{TIME}", "kind": "bpm_set", "bpm": {literal}, "direction": "up"}}')
    assert err.field == "bpm" and isinstance(err.value, float) and not math.isfinite(err.value)
    assert err.rule == "BPM must be a number between 20 and 300; NaN and Infinity are not allowed."


@pytest.mark.parametrize("bpm", [20, 300, 20.0, 299.75])
def test_bpm_on_or_inside_the_bounds_is_stored_as_float(bpm):
    event = parse_event(_with("bpm_set", bpm=bpm))
    assert event.bpm == bpm and type(event.bpm) is float


@pytest.mark.parametrize("direction", ["UP", "sideways", "", None, 1])
def test_direction_other_than_up_or_down_is_rejected(direction):
    err = _reject(_with("bpm_set", direction=direction))
    assert (err.field, err.value) == ("direction", direction)
    assert err.rule.startswith("direction must be one of: up, down.")


@pytest.mark.parametrize("instrument", ["Piano", "kazoo", "", None, 0])
def test_instrument_outside_vocabulary_is_rejected(instrument):
    err = _reject(_with("instrument_toggled", instrument=instrument))
    assert (err.field, err.value) == ("instrument", instrument)
    assert err.rule.startswith("instrument must be one of: piano, acoustic_guitar,")
    assert ("Did you mean 'piano'?" in err.rule) == (instrument == "Piano")


@pytest.mark.parametrize("enabled", [0, 1, "true", "false", None])
def test_enabled_that_is_not_a_json_boolean_is_rejected(enabled):
    err = _reject(_with("instrument_toggled", enabled=enabled))
    assert (err.field, err.value) == ("enabled", enabled)
    assert err.rule == "enabled must be true or false (a JSON boolean, not 0/1 or a string)."


@pytest.mark.parametrize("instruments", ["piano", {"piano": True}, None, 3])
def test_instruments_that_is_not_a_list_is_rejected(instruments):
    err = _reject(_with("segment_kept", instruments=instruments))
    assert (err.field, err.value) == ("instruments", instruments)
    assert err.rule == "instruments must be a JSON array of instrument names (it may be empty)."


@pytest.mark.parametrize(("instruments", "bad"), [(["piano", "kazoo"], "instruments[1] = 'kazoo'"),
                                                   (["piano", 3], "instruments[1] = 3"),
                                                   (["Bass"], "instruments[0] = 'Bass'")])
def test_instruments_item_outside_vocabulary_is_rejected_naming_its_index(instruments, bad):
    err = _reject(_with("segment_kept", instruments=instruments))
    assert (err.field, err.value) == ("instruments", instruments)
    assert err.rule.startswith(f"{bad} is not an instrument; each must be one of: piano,")


def test_instruments_with_a_duplicate_is_rejected():
    err = _reject(_with("segment_kept", instruments=["piano", "bass", "piano"]))
    assert (err.field, err.value) == ("instruments", ["piano", "bass", "piano"])
    assert err.rule == "instruments must not repeat an instrument; 'piano' appears more than once."


@pytest.mark.parametrize("instruments", [[], ["piano", "drums", "ambient_pad"]])
def test_instruments_are_stored_as_a_tuple_and_may_be_empty(instruments):
    assert parse_event(_with("segment_redone", instruments=instruments)).instruments == tuple(instruments)


def test_prompt_longer_than_the_limit_is_rejected():
    prompt = "é" * (MAX_PROMPT_CHARS + 1)
    err = _reject(_with("generation_requested", prompt=prompt))
    assert (err.field, err.value) == ("prompt", prompt)
    assert err.rule == f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters (found 2001)."
    assert len(str(err)) < 300  # the value is shown truncated


@pytest.mark.parametrize("prompt", [None, 42, ["calm"]])
def test_prompt_that_is_not_a_string_is_rejected(prompt):
    err = _reject(_with("generation_requested", prompt=prompt))
    assert (err.field, err.value) == ("prompt", prompt)
    assert err.rule == f"prompt must be a string of at most {MAX_PROMPT_CHARS} characters."


def test_prompt_with_an_unpaired_surrogate_is_rejected():
    err = _reject_text(f'{{"time": "{TIME}", "kind": "generation_requested", "prompt": "ok \\ud800"}}')
    assert (err.field, err.value) == ("prompt", "ok \ud800")
    assert err.rule == "prompt must be valid Unicode text; it has an unpaired surrogate at character 3."


@pytest.mark.parametrize("prompt", ["", "🎷" * MAX_PROMPT_CHARS, "ruhig, mit Klavier – 夜のジャズ"])
def test_prompt_of_any_unicode_up_to_the_limit_is_accepted(prompt):
    assert parse_event(_with("generation_requested", prompt=prompt)).prompt == prompt


# --- the error itself --------------------------------------------------------------------------------------------

def test_error_message_without_location_has_no_prefix():
    err = EventError("BPM must be a number between 20 and 300.", field="bpm", value=400)
    assert str(err) == "field 'bpm' = 400: BPM must be a number between 20 and 300."
    assert str(EventError("an event must be a JSON object ({...}).", value=[1])) == \
        "value [1]: an event must be a JSON object ({...})."


def test_with_location_returns_a_located_copy_and_leaves_the_original():
    err = EventError("rule.", field="bpm", value=400)
    located = err.with_location(line=17, source="log.jsonl")
    assert str(located) == "log.jsonl:17: field 'bpm' = 400: rule."
    assert (err.line, err.source) == (None, None)
    assert (located.field, located.value, located.rule) == ("bpm", 400, "rule.")


def test_long_value_is_truncated_in_the_message_but_kept_whole():
    err = EventError("rule.", field="prompt", value="x" * 500)
    assert len(str(err)) < 120 and "..." in str(err) and err.value == "x" * 500


def test_error_survives_pickling_with_all_attributes():
    err = pickle.loads(pickle.dumps(EventError("rule.", field="bpm", value=400, line=3, source="a.jsonl")))
    assert (err.rule, err.field, err.value, err.line, err.source) == ("rule.", "bpm", 400, 3, "a.jsonl")


def test_parse_event_errors_carry_no_location():
    with pytest.raises(EventError) as caught:
        parse_event(_with("bpm_set", bpm=400))
    assert (caught.value.line, caught.value.source) == (None, None)


# --- writing one line --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", EVENT_KINDS)
@pytest.mark.parametrize(("ts", "offset"), [(1793650445.0, 60), (1793650445.123456, -330), (946684800.000001, 0)])
def test_json_line_round_trips_every_kind(kind, ts, offset):
    event = replace(parse_event(VALID[kind]), ts=ts, utc_offset_min=offset)
    line = event_to_json_line(event)
    assert "\n" not in line
    assert parse_event(json.loads(line)) == event


def test_json_line_is_compact_unescaped_and_writes_whole_bpm_as_integer():
    assert event_to_json_line(parse_event(VALID["segment_kept"])) == (
        '{"time":"2026-11-02T21:14:05+01:00","kind":"segment_kept","genre":"jazz","bpm":96,"instruments":["piano"]}')
    prompt_line = event_to_json_line(parse_event(_with("generation_requested", prompt="café 🎷")))
    assert '"prompt":"café 🎷"' in prompt_line


@pytest.mark.parametrize(("event", "field"), [
    (Event(ts=1793650445.0, utc_offset_min=0, kind="bpm_set", bpm=400.0, direction="up"), "bpm"),
    (Event(ts=1793650445.0, utc_offset_min=0, kind="bpm_set", bpm=float("nan"), direction="up"), "bpm"),
    (Event(ts=1793650445.0, utc_offset_min=0, kind="bpm_set", bpm=90.0, direction="up", genre="jazz"), "genre"),
    (Event(ts=1793650445.0, utc_offset_min=0, kind="style_chosen"), "genre"),
    (Event(ts=1793650445.0, utc_offset_min=0, kind="dance", genre="jazz"), "kind"),
    (Event(ts=1793650445.0, utc_offset_min=0, kind=["style_chosen"], genre="jazz"), "kind"),
    (Event(ts=4102444800.0, utc_offset_min=0, kind="style_chosen", genre="jazz"), "time"),
    (Event(ts=float("inf"), utc_offset_min=0, kind="style_chosen", genre="jazz"), "ts"),
    (Event(ts=1793650445.0, utc_offset_min=24 * 60, kind="style_chosen", genre="jazz"), "ts"),
])
def test_json_line_refuses_an_event_that_would_not_load_back(event, field):
    with pytest.raises(EventError) as caught:
        event_to_json_line(event)
    assert caught.value.field == field
