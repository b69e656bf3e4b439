"""Requests follow the preference, explicit words beat the prior, and the prompt stays inside the request."""

from __future__ import annotations

import re

import numpy as np
import pytest

from generation.acestep_requests import AceStep15Request, to_v15
from generation.conditioning import ConditioningConfig, build_request
from model.device.streaming import StreamingPredictor
from model.features.prompt_intent import MAX_PROMPT_CHARS, parse_prompt
from model.features.recent_choices import RecentChoices, summarise_recent
from model.log.events import Event
from model.log.vocab import GENRE_INDEX, GENRES
from model.network.networks import ModelConfig, PreferenceLSTM
from simulations.loop.simulated_generator import SimulatedGenerator
from tests.helpers import T0, kept


def preference(**weights: float) -> np.ndarray:
    """A distribution with the given genre weights and a little mass everywhere else."""
    probs = np.full(len(GENRES), 0.01)
    for genre, weight in weights.items():
        probs[GENRE_INDEX[genre]] = weight
    return probs / probs.sum()


ROCK_FAN = preference(rock=0.95)
ROCK_HABITS = RecentChoices(bpm=138.0, instruments=("electric_guitar", "drums"))


def caption(request) -> str:
    return to_v15(request).caption.lower()


def test_strong_jazz_preference_gives_jazz_tags():
    request = build_request(preference(jazz=0.9), "")
    assert request.genres == ("jazz",)
    assert "saxophone" in request.instruments
    assert "jazz" in caption(request) and "saxophone" in caption(request)


def test_prior_adds_a_second_genre_above_the_threshold_strongest_first():
    request = build_request(preference(folk=0.5, classical=0.3, pop=0.05), "")
    assert request.genres == ("folk", "classical")
    assert request.genre_weights[0] > request.genre_weights[1]
    assert sum(request.genre_weights) == pytest.approx(1.0)


@pytest.mark.parametrize("prompt", ["jazz", "some jazz, please", "I feel like jazz", "jazz with piano", "JAZZ!"])
def test_typed_jazz_is_never_overridden_by_a_rock_prior(prompt):
    request = build_request(ROCK_FAN, prompt, ROCK_HABITS)
    assert request.genres == ("jazz",) and request.genre_source == "prompt"
    assert "jazz" in caption(request) and "electric_guitar" not in request.instruments
    assert "rock" not in caption(request) and "electric guitar" not in caption(request)
    assert request.bpm < 120  # jazz's own tempo, not the rock habit's 138


@pytest.mark.parametrize(
    ("prompt", "genre"),
    [("some hip hop", "hiphop"), ("hip-hop beats", "hiphop"), ("rap for the road", "hiphop"), ("r&b tonight", "rnb"),
     ("soul music", "rnb"), ("edm for the gym", "electronic"), ("techno", "electronic"),
     ("classical music", "classical"), ("something orchestral", "classical"), ("bossa nova", "jazz")],
)
def test_genre_synonyms_are_typed_genres_and_come_first(prompt, genre):
    request = build_request(ROCK_FAN, prompt)
    assert request.main_genre == genre


def test_typed_genres_keep_their_order_and_ruled_out_ones_never_appear():
    assert build_request(ROCK_FAN, "folk or jazz").genres == ("folk", "jazz")
    request = build_request(ROCK_FAN, "anything but rock, no drums", ROCK_HABITS)
    assert "rock" not in request.genres
    assert "drums" not in request.instruments


def test_explicit_bpm_wins_over_learned_tempo():
    request = build_request(ROCK_FAN, "something at 85 bpm", ROCK_HABITS)
    assert request.bpm == 85 and request.bpm_source == "prompt"
    assert to_v15(request).bpm == 85


@pytest.mark.parametrize(("word", "low", "high"), [("slow", 0, 88), ("fast", 120, 300)])
def test_tempo_words_win_over_learned_tempo(word, low, high):
    for habit in (70.0, 138.0):
        request = build_request(ROCK_FAN, f"something {word}", RecentChoices(bpm=habit))
        assert low <= request.bpm <= high


def test_v15_caption_has_no_bpm_and_key_goes_to_its_field():
    request = build_request(preference(jazz=0.9), "jazz at 90 bpm in A minor, 90bpm")
    params = to_v15(request)
    assert not re.search(r"bpm|beats per minute", params.caption, re.IGNORECASE)
    assert "90" not in params.caption and "A minor" not in params.caption
    assert params.bpm == 90 and params.keyscale == "A minor" and params.instrumental
    with pytest.raises(ValueError, match="caption must not state the tempo"):
        AceStep15Request(caption="lofi at 80 bpm", bpm=80)


def test_vague_prompt_is_completed_by_the_prior_calm_history_gives_a_quieter_request():
    """SEED.md: slow tempo + acoustic guitar + ambient history -> quieter, more atmospheric than pop piano."""
    calm_history = [Event(T0 + 60 * i, 0, "segment_kept", genre="folk", bpm=72.0,
                          instruments=("acoustic_guitar", "ambient_pad")) for i in range(10)]
    calm = build_request(preference(folk=0.5, classical=0.3), "something relaxing", summarise_recent(calm_history))
    default = build_request(preference(pop=0.9), "something relaxing")
    assert calm.bpm < default.bpm
    assert {"acoustic_guitar", "ambient_pad"} <= set(calm.instruments)
    assert "atmospheric" in calm.moods and "atmospheric" not in default.moods
    assert default.main_genre == "pop" and "piano" in default.instruments
    assert calm.genres == ("folk", "classical")


def test_recent_choices_weigh_set_tempo_and_toggles():
    events = [kept(T0, "jazz", bpm=100.0),
              Event(T0 + 10, 0, "bpm_set", bpm=80.0, direction="down"),
              Event(T0 + 20, 0, "instrument_toggled", instrument="piano", enabled=False),
              Event(T0 + 30, 0, "instrument_toggled", instrument="cello", enabled=True)]
    recent = summarise_recent(events, decay=1.0)
    assert recent.bpm == pytest.approx((100.0 + 2 * 80.0) / 3)
    assert recent.instruments == ("cello",)  # piano: +1 kept, -2 switched off
    assert summarise_recent([]) == RecentChoices()


def test_prompt_text_never_appears_outside_the_request_object(tmp_path):
    secret = "moonlit xylograph serenade"
    request = build_request(preference(jazz=0.6), secret, seed=3)
    v15 = to_v15(request)
    assert "xylograph" in v15.caption  # it does reach the generator ...
    for shown in (repr(request), repr(v15), repr(parse_prompt(secret)),
                  repr(SimulatedGenerator().generate(request))):
        assert "xylograph" not in shown  # ... and nothing a log or report would print
    model = PreferenceLSTM(ModelConfig(bidirectional=False, hidden_size=8, num_layers=1))
    StreamingPredictor(model, tmp_path).observe("u", Event(T0, 0, "generation_requested", prompt=secret))
    assert all(b"xylograph" not in path.read_bytes() for path in tmp_path.iterdir())
    with pytest.raises(ValueError) as error:
        parse_prompt("xylograph " * MAX_PROMPT_CHARS)
    assert "xylograph" not in str(error.value)


def test_invalid_inputs_state_the_rule():
    with pytest.raises(ValueError, match="preference must be 8 non-negative"):
        build_request(np.ones(3), "")
    with pytest.raises(ValueError, match="genre_threshold must be in"):
        ConditioningConfig(genre_threshold=0.0)
