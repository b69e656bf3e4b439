"""The questionnaire shapes the starting preference; exploration diversifies the first requests, then stops."""

from __future__ import annotations

import numpy as np
import pytest

from generation.cold_start import (
    ExplorationConfig,
    Questionnaire,
    choose_genre,
    marginal_prior,
    population_prior,
    questionnaire_distribution,
    starting_preference,
)
from model.features.examples import empty_examples
from model.log.vocab import GENRE_INDEX, GENRES
from model.network.networks import ModelConfig, PreferenceLSTM

FLAT = np.full(len(GENRES), 1.0 / len(GENRES))
JAZZ_LOVER = Questionnaire(favourite_genres=("jazz",), listening_time="evening", tempo="slow")


def test_jazz_questionnaire_puts_most_mass_on_jazz():
    probs = questionnaire_distribution(JAZZ_LOVER)
    assert probs.argmax() == GENRE_INDEX["jazz"]
    assert probs[GENRE_INDEX["jazz"]] > 0.4
    blended = starting_preference(JAZZ_LOVER, FLAT)
    assert blended.argmax() == GENRE_INDEX["jazz"]
    assert blended.sum() == pytest.approx(1.0)


def test_blend_is_the_documented_linear_mixture():
    prior = np.eye(len(GENRES))[GENRE_INDEX["rock"]]
    blended = starting_preference(JAZZ_LOVER, prior, questionnaire_weight=0.7)
    np.testing.assert_allclose(blended, 0.7 * questionnaire_distribution(JAZZ_LOVER) + 0.3 * prior)
    assert np.all(blended > 0.0)


def test_night_and_slow_answers_favour_calm_genres_over_fast_daytime_ones():
    calm = questionnaire_distribution(Questionnaire(("pop",), "night", "slow"))
    bright = questionnaire_distribution(Questionnaire(("pop",), "daytime", "fast"))
    calm_genres = [GENRE_INDEX[g] for g in ("classical", "jazz", "folk")]
    assert calm[calm_genres].sum() > bright[calm_genres].sum()


def test_population_prior_is_the_models_one_event_prediction():
    model = PreferenceLSTM(ModelConfig(bidirectional=False, hidden_size=8, num_layers=1))
    prior = population_prior(model, ts=1_788_739_200.0, utc_offset_min=60)
    assert prior.shape == (len(GENRES),) and prior.sum() == pytest.approx(1.0)


def test_marginal_prior_of_no_examples_is_flat():
    np.testing.assert_allclose(marginal_prior(empty_examples(4)), FLAT)


def test_cold_start_users_get_diverse_first_requests():
    config = ExplorationConfig(interactions=4, temperature=1.5)
    firsts = {choose_genre(FLAT, interactions_done=0, config=config, rng=np.random.default_rng(user)).genre
              for user in range(20)}
    assert len(firsts) >= 4


def test_exploration_samples_even_a_peaked_prior_but_ends_after_configured_interactions():
    config = ExplorationConfig(interactions=3, temperature=2.0)
    peaked = starting_preference(JAZZ_LOVER, FLAT)
    rng = np.random.default_rng(0)
    explored = [choose_genre(peaked, interactions_done=0, config=config, rng=rng).genre for _ in range(50)]
    assert len(set(explored)) >= 3
    for done in range(6):
        choice = choose_genre(peaked, interactions_done=done, config=config, rng=rng)
        assert choice.explored == (done < 3)
        if done >= 3:
            assert choice.genre == "jazz"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"favourite_genres": (), "listening_time": "night", "tempo": "slow"}, "favourite_genres must name 1 to 3"),
        ({"favourite_genres": ("polka",), "listening_time": "night", "tempo": "slow"}, "must be among"),
        ({"favourite_genres": ("jazz",), "listening_time": "noon", "tempo": "slow"}, "listening_time must be one of"),
        ({"favourite_genres": ("jazz",), "listening_time": "night", "tempo": "brisk"}, "tempo must be one of"),
    ],
)
def test_invalid_answers_state_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Questionnaire(**kwargs)


def test_prior_that_is_not_a_distribution_is_refused():
    with pytest.raises(ValueError, match="prior must be a distribution"):
        starting_preference(JAZZ_LOVER, np.ones(len(GENRES)))
    with pytest.raises(ValueError, match="interactions_done must be >= 0"):
        choose_genre(FLAT, interactions_done=-1, config=ExplorationConfig(), rng=np.random.default_rng(0))
