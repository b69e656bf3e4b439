"""Small builders shared by tests."""

from __future__ import annotations

from model.log.events import Event
from model.network.networks import ModelConfig

T0 = 1_788_739_200  # 2026-09-07 00:00:00 UTC, a Monday
PRIOR_MODEL = ModelConfig(bidirectional=False, hidden_size=16, num_layers=1, dropout=0.0, head_dropout=0.0,
                          style_embedding_dim=8, residual=True)
"""The default model (conf/model/prior.yaml)."""
CALM_ACOUSTIC = (("folk", "classical"), 72.0, ("acoustic_guitar", "strings"))
CLUB = (("electronic",), 128.0, ("synth", "drums"))
"""(genres kept in turn, tempo, instruments) of two listeners who ask for the same vague music."""


def request(ts: float, prompt: str = "something relaxing", offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="generation_requested", prompt=prompt)


def kept(ts: float, genre: str, bpm: float = 100.0, offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="segment_kept", genre=genre, bpm=bpm, instruments=("piano",))


def redone(ts: float, genre: str, bpm: float = 100.0, offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="segment_redone", genre=genre, bpm=bpm, instruments=())


def listener_log(taste: tuple = CALM_ACOUSTIC, *, start: float = T0, sessions: int = 12,
                 prompt: str = "something to listen to") -> list[Event]:
    """A listener's log: each session a request, a redo, a tempo set, a keep of their taste (one session a day)."""
    genres, bpm, instruments = taste
    events = []
    for i in range(sessions):
        t = start + i * 86_400 + 19 * 3_600
        genre = genres[i % len(genres)]
        events += [Event(ts=t, utc_offset_min=60, kind="generation_requested", prompt=prompt),
                   Event(ts=t + 40, utc_offset_min=60, kind="segment_redone", genre=genre, bpm=bpm + 20, instruments=()),
                   Event(ts=t + 60, utc_offset_min=60, kind="bpm_set", bpm=bpm, direction="down"),
                   Event(ts=t + 90, utc_offset_min=60, kind="segment_kept", genre=genre, bpm=bpm,
                         instruments=instruments)]
    return events


def sample_events() -> list[Event]:
    return listener_log()


def gaussian_mechanism(*, clipping_norm: float, noise_multiplier: float, expected_clients: int, seed: int = 0):
    """The user-level mechanism with q = 1 over ``expected_clients`` users (qN = ``expected_clients``), seeded noise."""
    from privacy.accounting import PrivacyLedger
    from privacy.randomness import SeededNoise
    from privacy.user_level import UserLevelGaussian

    return UserLevelGaussian(clipping_norm=clipping_norm, noise_multiplier=noise_multiplier, sample_rate=1.0,
                             population=expected_clients, noise=SeededNoise([seed]), ledger=PrivacyLedger(),
                             delta=1e-5, accountant="rdp")


def contribution(update: dict, statistics=None):
    """A train reply's content: ``update``'s arrays and the statistics' array (a participant's, unclipped, loss 1
    under no clipping norm, unless given), laid out as ``protocol.reply_layout`` says, each as ``Array(value)``."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, RecordDict

    from protocol.reply_layout import CONTRIBUTION, STATISTICS_ARRAY

    if statistics is None:
        statistics = np.array([1.0, 1.0, 0.25], dtype=np.float32)
    arrays = {name: value if isinstance(value, Array) else Array(np.asarray(value)) for name, value in update.items()}
    stats = statistics if isinstance(statistics, Array) else Array(np.asarray(statistics))
    return RecordDict({CONTRIBUTION: ArrayRecord({**arrays, STATISTICS_ARRAY: stats})})


def announced(**changes) -> dict:
    """What a real server announces with every round (``protocol.instructions``): the run's key and plan and its
    user-level mechanism, within the default device policy (``client.privacy_policy``). Keyword arguments of
    ``TrainInstructions``."""
    from protocol.instructions import UserLevelInstructions

    return {"run_key": "test-run", "planned_rounds": 10,
            "user_level": UserLevelInstructions(noise_multiplier=1.0, sample_rate=0.1, delta=1e-6)} | changes
