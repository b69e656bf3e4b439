"""Small builders shared by tests."""

from __future__ import annotations

from model.log.events import Event

T0 = 1_788_739_200  # 2026-09-07 00:00:00 UTC, a Monday


def request(ts: float, prompt: str = "something relaxing", offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="generation_requested", prompt=prompt)


def kept(ts: float, genre: str, bpm: float = 100.0, offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="segment_kept", genre=genre, bpm=bpm, instruments=("piano",))


def redone(ts: float, genre: str, bpm: float = 100.0, offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="segment_redone", genre=genre, bpm=bpm, instruments=())


def gaussian_mechanism(*, clipping_norm: float, noise_multiplier: float, expected_clients: int, seed: int = 0):
    """The user-level mechanism with q = 1 over ``expected_clients`` users (qN = ``expected_clients``), seeded noise."""
    from privacy.accounting import PrivacyLedger
    from privacy.randomness import SeededNoise
    from privacy.user_level import UserLevelGaussian

    return UserLevelGaussian(clipping_norm=clipping_norm, noise_multiplier=noise_multiplier, sample_rate=1.0,
                             population=expected_clients, noise=SeededNoise([seed]), ledger=PrivacyLedger(),
                             delta=1e-5, accountant="rdp")
