"""Properties of the synthetic population: reproducible users, a taste that moves, valid and realistic logs."""

from __future__ import annotations

import time
import tracemalloc
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from model.log.parsing import event_to_json_line, parse_event
from model.log.vocab import GENRE_INDEX, GENRES, INSTRUMENTS
from simulations.population.population import Population, PopulationConfig
from simulations.population.sessions import APP_DEFAULT_GENRE, GenerationRequest, Segment
from simulations.population.taste import WEEKEND_BONUS
from simulations.population.world import World

SMALL = PopulationConfig(num_users=50, days=14)
HOUR, DAY = 3600, 86_400


def _local_ts(user, day: int, hour: float) -> float:
    """UTC seconds of ``hour`` o'clock on simulated local ``day`` of ``user``."""
    return SMALL.start_ts + day * DAY + hour * HOUR - 60 * user.utc_offset_min  # every test starts on SMALL's date


def _requests(events):
    """The events split into requests, each starting at its ``generation_requested``."""
    requests = []
    for event in events:
        if event.kind == "generation_requested":
            requests.append([])
        requests[-1].append(event)
    return requests


def test_same_seed_and_id_give_identical_events():
    assert Population(SMALL).user(7).events() == Population(SMALL).user(7).events()


def test_user_is_independent_of_other_users_and_build_order():
    alone = Population(SMALL).user(7).events()
    population = Population(replace(SMALL, num_users=1000))
    for other in (999, 3, 500):
        population.user(other).events()
    assert population.user(7).events() == alone


def test_events_can_be_rebuilt_from_the_same_user_object():
    user = Population(SMALL).user(3)
    assert user.events() == user.events()


def test_different_seeds_give_different_users():
    a, b = Population(SMALL).user(0), Population(replace(SMALL, seed=1)).user(0)
    assert a.events() != b.events()
    assert not np.allclose(a.true_preference(SMALL.start_ts), b.true_preference(SMALL.start_ts))


def test_different_ids_give_different_users():
    population = Population(SMALL)
    assert population.user(0).events() != population.user(1).events()


def test_true_preference_is_a_distribution_over_genres():
    user = Population(SMALL).user(5)
    for day in range(SMALL.days):
        probs = user.true_preference(_local_ts(user, day, 9.5))
        assert probs.shape == (len(GENRES),)
        assert np.all(probs > 0.0)
        assert probs.sum() == pytest.approx(1.0)


def test_taste_at_bundles_preference_tempo_and_instruments():
    user = Population(SMALL).user(5)
    ts = _local_ts(user, 2, 20.0)
    taste = user.taste_at(ts)
    np.testing.assert_array_equal(taste.genre_probs, user.true_preference(ts))
    assert taste.instrument_probs.shape == (len(INSTRUMENTS),)
    assert np.all((taste.instrument_probs > 0.0) & (taste.instrument_probs < 1.0))
    assert 40.0 < taste.bpm_mean < 200.0 and taste.bpm_sd > 0.0
    assert not taste.genre_probs.flags.writeable and not taste.instrument_probs.flags.writeable


def test_true_preference_changes_with_hour_of_day():
    population = Population(replace(SMALL, world=World(drift_strength=0.0, switch_prob=0.0, weekend_habit_prob=0.0)))
    changes = []
    for user_id in range(20):
        user = population.user(user_id)
        night, day = user.true_preference(_local_ts(user, 2, 2.0)), user.true_preference(_local_ts(user, 2, 13.0))
        changes.append(np.abs(night - day).sum())
    assert np.median(changes) > 0.2


def test_night_favours_calm_genres_on_average():
    population = Population(SMALL)
    calm = [GENRE_INDEX[g] for g in ("classical", "jazz", "folk")]
    night = day = 0.0
    for user_id in range(30):
        user = population.user(user_id)
        night += user.true_preference(_local_ts(user, 1, 1.0))[calm].sum()
        day += user.true_preference(_local_ts(user, 1, 13.0))[calm].sum()
    assert night > day + 0.1 * 30


def test_true_preference_drifts_across_weeks():
    population = Population(replace(SMALL, days=28, world=World(switch_prob=0.0)))
    for user_id in range(10):
        user = population.user(user_id)
        week0, week3 = user.true_preference(_local_ts(user, 1, 12.0)), user.true_preference(_local_ts(user, 22, 12.0))
        assert np.abs(week0 - week3).sum() > 0.05


def test_without_drift_or_switch_the_same_local_hour_and_weekday_repeat():
    config = replace(SMALL, days=28, world=World(drift_strength=0.0, switch_prob=0.0))
    user = Population(config).user(4)
    np.testing.assert_allclose(user.true_preference(_local_ts(user, 1, 12.0)),
                               user.true_preference(_local_ts(user, 22, 12.0)))


def test_abrupt_switch_changes_the_dominant_taste():
    config = replace(SMALL, days=28, world=World(drift_strength=0.0, switch_prob=1.0, rhythm_strength=0.0,
                                                 weekend_habit_prob=0.0))
    population = Population(config)
    for user_id in range(10):
        user = population.user(user_id)
        first, last = user.true_preference(_local_ts(user, 0, 12.0)), user.true_preference(_local_ts(user, 27, 12.0))
        assert np.abs(first - last).sum() > 0.4


def test_weekend_habit_lifts_exactly_one_genre_on_saturdays():
    config = replace(SMALL, world=World(drift_strength=0.0, switch_prob=0.0, weekend_habit_prob=1.0))
    population = Population(config)
    for user_id in range(10):
        user = population.user(user_id)  # the simulation starts on a Monday: local day 4 is Friday, 5 Saturday
        friday, saturday = (user.true_preference(_local_ts(user, day, 12.0)) for day in (4, 5))
        log_ratio = np.log(saturday / friday)
        assert log_ratio.max() - np.delete(log_ratio, log_ratio.argmax()).max() == pytest.approx(WEEKEND_BONUS)


def test_users_live_in_several_time_zones():
    population = Population(SMALL)
    assert len({population.user(i).utc_offset_min for i in range(SMALL.num_users)}) >= 4


def test_events_are_valid_and_round_trip_through_the_parser():
    population = Population(SMALL)
    for user_id in range(5):
        for event in population.user(user_id).events():
            assert parse_event(event.to_json_dict()) == event
            event_to_json_line(event)  # also checks fields the kind does not use are None


def test_events_are_sorted_whole_seconds_inside_the_window():
    population = Population(SMALL)
    for user_id in range(10):
        events = population.user(user_id).events()
        stamps = [e.ts for e in events]
        assert stamps == sorted(stamps)
        assert all(ts == int(ts) for ts in stamps)
        assert stamps[0] >= SMALL.start_ts
        starts = [e.ts for e in events if e.kind == "generation_requested"]
        assert starts[-1] < SMALL.end_ts


def test_every_request_ends_with_exactly_one_kept_segment():
    for request in _requests(Population(SMALL).user(2).events()):
        kinds = [e.kind for e in request]
        assert kinds[-1] == "segment_kept" and kinds.count("segment_kept") == 1
        assert kinds.count("segment_redone") < 4


def test_default_app_plays_the_last_chosen_style_else_pop():
    for request in _requests(Population(SMALL).user(2).events()):
        style = None
        for event in request:
            if event.kind == "style_chosen":
                style = event.genre
            elif event.kind in ("segment_kept", "segment_redone"):
                assert event.genre == (style or APP_DEFAULT_GENRE)
                assert event.instruments


def test_users_sometimes_redo_nudge_tempo_and_toggle_instruments():
    kinds = Counter(e.kind for user_id in range(5) for e in Population(SMALL).user(user_id).events())
    assert all(kinds[kind] > 0 for kind in ("segment_redone", "bpm_set", "instrument_toggled", "style_chosen"))
    assert kinds["segment_kept"] == kinds["generation_requested"]


def test_generator_parameter_replaces_the_app_step():
    seen: list[GenerationRequest] = []

    def always_jazz(request: GenerationRequest) -> Segment:
        seen.append(request)
        return Segment("jazz", 101.0, ("piano", "saxophone"))

    events = Population(SMALL).user(2).events(generator=always_jazz)
    segments = [e for e in events if e.kind in ("segment_kept", "segment_redone")]
    assert len(segments) == len(seen)
    assert all(e.genre == "jazz" and e.bpm == 101.0 for e in segments)
    first = seen[0]
    assert first.attempt == 0 and first.history[0].kind == "generation_requested"
    assert first.history[-1].ts <= first.ts
    assert len(seen[-1].history) > len(first.history)


def test_far_user_builds_quickly_and_population_holds_no_user_arrays():
    tracemalloc.start()
    population = Population(PopulationConfig(num_users=100_000))
    allocated, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert allocated < 10_000
    assert set(vars(population)) == {"config"}
    assert len(population) == 100_000
    started = time.perf_counter()
    events = population.user(99_999).events()
    assert time.perf_counter() - started < 1.0
    assert events


@pytest.mark.parametrize("user_id", [-1, 100])
def test_user_id_outside_the_population_is_rejected_naming_the_range(user_id):
    with pytest.raises(IndexError, match=rf"\[0, 100\).*{user_id}"):
        Population(PopulationConfig(num_users=100)).user(user_id)


def test_user_id_must_be_an_integer():
    with pytest.raises(TypeError):
        Population(SMALL).user(1.5)


@pytest.mark.parametrize(("field", "value"), [
    ("seed", -1), ("seed", 1.5), ("num_users", 0), ("num_users", True), ("days", 0), ("days", 400),
])
def test_config_validation_names_field_value_and_range(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be .*\[.*\]; found {value!r}\.$"):
        PopulationConfig(**{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("sessions_per_day", 0.0), ("drift_strength", -0.1), ("switch_prob", 1.5), ("rhythm_strength", float("nan")),
    ("weekend_habit_prob", "0.5"),
])
def test_world_validation_names_field_value_and_range(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be .*\[.*\]; found {value!r}\.$"):
        World(**{field: value})


def test_start_date_must_be_an_iso_date():
    with pytest.raises(ValueError, match=r"start_date must be an ISO date YYYY-MM-DD\. Found '7/9/2026'"):
        PopulationConfig(start_date="7/9/2026")


def test_time_context_oracle_beats_history_mode_which_beats_global_mode():
    """The learning signal: knowing the moment's taste beats the user's habit, which beats the crowd's."""
    population = Population(PopulationConfig(num_users=40))
    targets = []  # (kept genre, user's most frequent kept genre so far, oracle genre)
    for user_id in range(len(population)):
        user, history = population.user(user_id), Counter()
        for request in _requests(user.events()):
            kept = request[-1].genre
            oracle = GENRES[int(np.argmax(user.true_preference(request[0].ts)))]
            targets.append((kept, max(history, key=history.get) if history else APP_DEFAULT_GENRE, oracle))
            history[kept] += 1
    top = Counter(t[0] for t in targets).most_common(1)[0][0]
    habit = np.mean([t[0] == t[1] for t in targets])
    oracle = np.mean([t[0] == t[2] for t in targets])
    crowd = np.mean([t[0] == top for t in targets])
    assert oracle > habit + 0.05
    assert habit > crowd + 0.1
    assert oracle < 0.8  # the next kept genre is not deterministic
