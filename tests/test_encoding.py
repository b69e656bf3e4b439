import math

import numpy as np
import pytest
import torch

from model.features.encoding import (

    BPM,

    FEATURE_DIM,

    GENRE,

    INSTRUMENT_SLOTS,

    KIND,

    NO_GENRE,

    TIME,

    EventEncoder,

    encode_events,

)

from model.features.examples import build_examples, encode_log, split_recent, windows
from model.log.events import Event
from model.log.vocab import GENRE_INDEX, INSTRUMENT_INDEX, KIND_INDEX
from simulations.population.population import Population, PopulationConfig
from tests.helpers import T0, kept, redone, request


def test_every_event_kind_encodes_to_fixed_width_with_its_one_hots():
    events = [
        request(T0),
        Event(ts=T0 + 10, utc_offset_min=0, kind="style_chosen", genre="jazz"),
        Event(ts=T0 + 20, utc_offset_min=0, kind="bpm_set", bpm=160.0, direction="down"),
        Event(ts=T0 + 30, utc_offset_min=0, kind="instrument_toggled", instrument="cello", enabled=False),
        kept(T0 + 40, "rock", bpm=300.0),
    ]
    x = encode_events(events)
    assert x.shape == (5, FEATURE_DIM) and x.dtype == np.float32
    assert x[0, GENRE.start + NO_GENRE] == 1 and x[1, GENRE.start + GENRE_INDEX["jazz"]] == 1
    assert np.all(x[:, GENRE].sum(axis=1) == 1) and np.all(x[:, KIND].sum(axis=1) == 1)
    assert x[2, KIND.start + KIND_INDEX["bpm_set"]] == 1
    assert x[2, BPM.start] == pytest.approx((160 - 20) / 280) and x[2, BPM.start + 1] == 1
    assert x[2, BPM.start + 3] == 1 and x[2, BPM.start + 2] == 0  # direction down
    assert x[3, INSTRUMENT_SLOTS.start + INSTRUMENT_INDEX["cello"]] == 1 and x[3, INSTRUMENT_SLOTS.stop - 1] == -1
    assert x[4, INSTRUMENT_SLOTS.start + INSTRUMENT_INDEX["piano"]] == 1 and x[4, BPM.start] == pytest.approx(1.0)
    assert x[0, BPM.start + 1] == 0  # no tempo on a request


def test_time_features_use_local_hour_weekday_and_gap():
    # 2026-09-07 is a Monday; 23:00 UTC is 01:00 on Tuesday at UTC+2.
    a = Event(ts=T0 + 23 * 3600, utc_offset_min=120, kind="generation_requested", prompt="")
    b = Event(ts=T0 + 23 * 3600 + 7200, utc_offset_min=120, kind="generation_requested", prompt="")
    x = encode_events([a, b])
    hour = 2 * math.pi * 1 / 24
    assert x[0, TIME.start] == pytest.approx(math.sin(hour), abs=1e-6)
    assert x[0, TIME.start + 1] == pytest.approx(math.cos(hour), abs=1e-6)
    day = 2 * math.pi * (1 + 1 / 24) / 7  # Tuesday 01:00
    assert x[0, TIME.start + 2] == pytest.approx(math.sin(day), abs=1e-6)
    assert x[0, TIME.start + 4] == 0.0 and x[1, TIME.start + 4] == pytest.approx(math.log1p(2) / math.log1p(672))


def test_examples_target_the_next_kept_genre_and_read_only_the_past():
    events = [request(T0), redone(T0 + 5, "pop"), kept(T0 + 10, "jazz"), request(T0 + 100), kept(T0 + 110, "folk"), request(T0 + 200)]
    ex = build_examples(events, window=3)
    assert len(ex) == 2  # the last request has no kept segment after it
    assert ex.targets.tolist() == [GENRE_INDEX["jazz"], GENRE_INDEX["folk"]]
    assert ex.lengths.tolist() == [1, 3]
    full = torch.from_numpy(encode_events(events))
    assert torch.equal(ex.x[1, :3], full[1:4])  # the window ends at the request itself
    assert torch.all(ex.x[0, 1:] == 0)  # right padding
    assert ex.times.tolist() == [T0, T0 + 100]


def test_split_recent_holds_out_the_latest_prediction_points():
    events = []
    for k in range(10):
        events += [request(T0 + 100 * k), kept(T0 + 100 * k + 10, "pop")]
    train, held_out = split_recent(build_examples(events, window=8), 0.2)
    assert len(train) == 8 and len(held_out) == 2
    assert held_out.times.min() > train.times.max()


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="window"):
        build_examples([request(T0)], window=0)


def test_a_log_encodes_to_the_same_rows_whole_in_pieces_and_one_event_at_a_time():
    population = Population(PopulationConfig(seed=3, num_users=3, days=7))
    for user in range(3):
        events = population.user(user).events()
        whole = encode_events(events)
        pieces, one_by_one = EventEncoder(), EventEncoder()
        cuts = [0, 1, 2, len(events) // 3, len(events) // 2, len(events)]
        in_pieces = np.concatenate([pieces.encode_all(events[a:b]) for a, b in zip(cuts, cuts[1:])])
        np.testing.assert_array_equal(in_pieces, whole)
        np.testing.assert_array_equal(np.stack([one_by_one.encode(event) for event in events]), whole)
        assert pieces.last_ts == one_by_one.last_ts and np.array_equal(pieces.recent, one_by_one.recent)


def test_examples_cut_from_an_encoded_log_share_no_memory_with_it():
    events = [request(T0), kept(T0 + 10, "jazz"), request(T0 + 100), kept(T0 + 110, "folk")]
    log = encode_log(events)
    first = windows(log, 4)
    for tensor in (first.x, first.lengths, first.targets, first.times):
        tensor.zero_()
    again = windows(log, 4)
    assert again.targets.tolist() == [GENRE_INDEX["jazz"], GENRE_INDEX["folk"]] and again.x.abs().sum() > 0
