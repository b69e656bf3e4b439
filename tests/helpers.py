"""Small builders shared by tests."""

from __future__ import annotations

from model.events import Event

T0 = 1_788_739_200  # 2026-09-07 00:00:00 UTC, a Monday


def request(ts: float, prompt: str = "something relaxing", offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="generation_requested", prompt=prompt)


def kept(ts: float, genre: str, bpm: float = 100.0, offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="segment_kept", genre=genre, bpm=bpm, instruments=("piano",))


def redone(ts: float, genre: str, bpm: float = 100.0, offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="segment_redone", genre=genre, bpm=bpm, instruments=())
