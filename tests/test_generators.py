"""The simulated generator follows requests at the configured noise (ACE-Step 1.5: tests/test_acestep_pipeline.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from generation.conditioning import MusicRequest
from generation.generators import Generator
from simulations.loop.simulated_generator import (
    GENRE_NEIGHBOURS,
    AdherenceNoise,
    SimulatedGenerator,
)
from model.log.vocab import GENRE_INDEX

JAZZ = MusicRequest(genres=("jazz",), genre_weights=(1.0,), bpm=96, instruments=("piano", "bass", "saxophone"),
                    moods=("calm",))
MIXED = MusicRequest(genres=("folk", "classical"), genre_weights=(0.6, 0.4), bpm=74,
                     instruments=("acoustic_guitar", "ambient_pad"), moods=())
DRAWS = 4000


def test_simulated_generator_satisfies_the_protocol():
    assert isinstance(SimulatedGenerator(), Generator)


@pytest.mark.parametrize("request_", [JAZZ, MIXED])
def test_zero_noise_reproduces_the_request(request_):
    result = SimulatedGenerator(seed=1).generate(request_)
    assert result.source == "simulated" and result.is_simulated and result.audio_path is None
    descriptor = result.descriptor
    assert descriptor.main_genre == request_.main_genre
    for genre, weight in zip(request_.genres, request_.genre_weights):
        assert descriptor.genre_mix[GENRE_INDEX[genre]] == pytest.approx(weight)
    assert descriptor.bpm == request_.bpm
    assert set(descriptor.instruments) == set(request_.instruments)


def test_genre_drift_happens_at_the_configured_rate_and_only_to_neighbours():
    generator = SimulatedGenerator(AdherenceNoise(genre_drift_prob=0.3), seed=2)
    mains = [generator.generate(JAZZ).descriptor.main_genre for _ in range(DRAWS)]
    drifted = [genre for genre in mains if genre != "jazz"]
    assert len(drifted) / DRAWS == pytest.approx(0.3, abs=0.03)
    assert set(drifted) <= set(GENRE_NEIGHBOURS["jazz"])


def test_instrument_drops_and_tempo_errors_happen_at_the_configured_rates():
    noise = AdherenceNoise(instrument_drop_prob=0.25, half_time_prob=0.2, bpm_jitter_sd=0.0)
    generator = SimulatedGenerator(noise, seed=3)
    results = [generator.generate(JAZZ).descriptor for _ in range(DRAWS)]
    heard = np.mean([len(set(r.instruments) & set(JAZZ.instruments)) / len(JAZZ.instruments) for r in results])
    assert 1.0 - heard == pytest.approx(0.25, abs=0.03)
    off_tempo = np.mean([r.bpm in (JAZZ.bpm / 2, JAZZ.bpm * 2) for r in results])
    assert off_tempo == pytest.approx(0.2, abs=0.03)
    jittered = SimulatedGenerator(AdherenceNoise(bpm_jitter_sd=5.0), seed=4)
    errors = [jittered.generate(JAZZ).descriptor.bpm - JAZZ.bpm for _ in range(DRAWS)]
    assert np.std(errors) == pytest.approx(5.0, rel=0.1)


def test_simulation_is_deterministic_given_its_seed():
    noise = AdherenceNoise(genre_drift_prob=0.5, instrument_drop_prob=0.5, bpm_jitter_sd=8.0)
    first = [SimulatedGenerator(noise, seed=5).generate(JAZZ) for _ in range(3)]
    again = [SimulatedGenerator(noise, seed=5).generate(JAZZ) for _ in range(3)]
    assert first == again
    seeded = replace(JAZZ, seed=11)
    generator = SimulatedGenerator(noise, seed=5)
    assert generator.generate(seeded) == SimulatedGenerator(noise, seed=5).generate(seeded)


def test_invalid_noise_states_the_rule():
    with pytest.raises(ValueError, match=r"genre_drift_prob must be in \[0, 1\]. Found 1.5"):
        AdherenceNoise(genre_drift_prob=1.5)
