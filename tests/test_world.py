"""Worlds a researcher can define: today's world by default, bit for bit; a world from Hydra changes the users as
stated; an impossible world is refused at config validation, naming the key."""

import hashlib
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
from flwr.app import ConfigRecord

from model.log.vocab import GENRES
from protocol.instructions import TrainInstructions, from_config_items, to_config_items
from simulations.federation.device_data import population_of, simulated_data
from simulations.federation.simulation_settings import simulated_settings
from simulations.loop.pretraining import flower_overrides
from simulations.loop.user import draw_prompt
from simulations.population.population import Population, PopulationConfig
from simulations.population.sessions import MOOD_PROMPTS, VAGUE_PROMPTS
from simulations.population.world import MOODS, GenreLogits, GenreMoods, Persona, World
from validation.config import ConfigError
from tests.helpers import ROOT

TODAY_FINGERPRINTS = [((0, 28, 7), "08439f158fbc067a", 372), ((3, 14, 1), "14a12ed50b109d62", 268)]
"""(seed, days, user) -> sha256 of repr(events)[:16] and event count, computed before worlds were configurable."""


def _prompts(world: World, users: int = 12) -> list[str]:
    population = Population(PopulationConfig(num_users=users, days=14, world=world))
    return [e.prompt for uid in range(users) for e in population.user(uid).events() if e.kind == "generation_requested"]


@pytest.mark.parametrize(("key", "fingerprint", "count"), TODAY_FINGERPRINTS)
def test_default_world_reproduces_todays_users_bit_for_bit(key, fingerprint, count):
    seed, days, user = key
    events = Population(PopulationConfig(seed=seed, days=days)).user(user).events()
    assert (hashlib.sha256(repr(events).encode()).hexdigest()[:16], len(events)) == (fingerprint, count)


@pytest.mark.parametrize("preset", ["default", "small", "10k"])
def test_every_population_preset_composes_todays_world(compose_config, preset):
    assert simulated_settings(compose_config(f"population={preset}")).population.world == World()


def test_per_genre_groups_have_one_field_per_genre_and_moods_have_prompts():
    assert [f.name for f in fields(GenreLogits)] == [f.name for f in fields(GenreMoods)] == list(GENRES)
    assert set(MOOD_PROMPTS) == set(MOODS)


def test_a_world_of_vague_prompts_from_hydra_gives_only_vague_prompts(compose_config):
    world = simulated_settings(compose_config("population.world.prompt_mix={vague: 1, mood: 0, genre: 0}")).population.world
    prompts = _prompts(world)
    assert prompts and set(prompts) <= set(VAGUE_PROMPTS)
    assert not set(_prompts(World())) <= set(VAGUE_PROMPTS)


def test_genre_moods_from_hydra_decide_the_mood_a_prompt_names(compose_config):
    moods = "{" + ", ".join(f"{genre}: energetic" for genre in GENRES) + "}"
    world = simulated_settings(compose_config("population.world.prompt_mix={vague: 0, mood: 1, genre: 0}",
                                                f"population.world.genre_moods={moods}")).population.world
    assert set(_prompts(world)) <= set(MOOD_PROMPTS["energetic"])
    rng = np.random.default_rng(0)
    assert {draw_prompt(rng, "jazz", world) for _ in range(50)} <= {("mood", p) for p in MOOD_PROMPTS["energetic"]}


def test_a_still_world_from_hydra_has_tastes_that_never_move(compose_config):
    still = ["population.world.drift_strength=0", "population.world.switch_prob=0",
             "population.world.rhythm_strength=0", "population.world.weekend_habit_prob=0"]
    world = simulated_settings(compose_config(*still)).population.world
    config = PopulationConfig(num_users=5, days=28, world=world)
    for uid in range(5):
        user = Population(config).user(uid)
        moments = [config.start_ts + k * 37_000 for k in range(60)]
        assert all(np.array_equal(user.true_preference(ts), user.true_preference(moments[0])) for ts in moments)
    moving = Population(PopulationConfig(num_users=1, days=28)).user(0)
    assert not np.array_equal(moving.true_preference(config.start_ts), moving.true_preference(config.end_ts - 1))


def test_a_persona_table_of_jazz_lovers_makes_jazz_the_common_want():
    jazz = [Persona(f"jazz{i}", GenreLogits(jazz=8.0), 90.0, 10.0, ("piano", "bass"), 1.0) for i in range(3)]
    world = World(personas=tuple(jazz), drift_strength=0.0, rhythm_strength=0.0, weekend_habit_prob=0.0)
    population = Population(PopulationConfig(num_users=10, days=14, world=world))
    kept = [e.genre for uid in range(10) for e in population.user(uid).events() if e.kind == "segment_kept"]
    assert kept.count("jazz") > 0.8 * len(kept)


@pytest.mark.parametrize("overrides,message", [
    (["population.world.prompt_mix.vague=0.6"], "population.world.prompt_mix: vague + mood + genre must sum to 1"),
    (["+population.world.personas.0.genre_logits.metal=2"], "Unknown key population.world.personas.0.genre_logits.metal"),
    (["population.world.personas.1.instruments=[kazoo]"], "population.world.personas.1: instruments must be"),
    (["population.world.personas.0.popularity=0"], "population.world.personas.0: popularity must be a positive"),
    (["population.world.genre_moods.jazz=sleepy"], "population.world.genre_moods: jazz must be one of"),
    (["population.world.personas=[]"], "population.world: personas must list at least 3"),
    (["population.world.switch_prob=2"], "population.world: switch_prob must be in [0, 1]; found 2"),
    (["population.world.drift_strength=fast"], "population.world.drift_strength must be of type float"),
])
def test_impossible_worlds_fail_validation_naming_the_key(compose_config, overrides, message):
    with pytest.raises(ConfigError) as error:
        simulated_settings(compose_config(*overrides))
    assert message in str(error.value)


@pytest.mark.slow  # the real command in a child process (seconds of imports); the rule itself: in this process above
def test_entry_point_refuses_an_impossible_world_with_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "simulations.run", "population.world.prompt_mix.genre=0.5",
         "hydra.run.dir=/tmp/fedpref-never-created"], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "population.world.prompt_mix: vague + mood + genre must sum to 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_world_round_trips_through_a_flower_config_record():
    personas = World().personas[:4]
    world = World(sessions_per_day=2.0, personas=personas, genre_moods=GenreMoods(pop="calm"))
    sent = TrainInstructions(round=1, seed=0, data=simulated_data(PopulationConfig(world=world)))
    items = dict(ConfigRecord(to_config_items(sent)))
    assert items["data.population.world.personas.3.instruments.1"] == personas[3].instruments[1]
    assert from_config_items(items) == sent
    assert population_of(from_config_items(items).data).world == world


def test_every_instruction_value_is_a_scalar_the_secagg_legacy_records_carry():
    """SecAgg+ runs on Flower's legacy records, whose config values are ``common.Scalar`` (no lists)."""
    from flwr.common import FitIns, Parameters
    from flwr.compat.common.recorddict_compat import fitins_to_recorddict, recorddict_to_fitins

    items = to_config_items(TrainInstructions(round=1, seed=0, data=simulated_data(PopulationConfig())))
    assert all(isinstance(v, (bool, int, float, str)) for v in items.values())
    legacy = fitins_to_recorddict(FitIns(Parameters(tensors=[], tensor_type=""), items), keep_input=True)
    assert recorddict_to_fitins(legacy, keep_input=True).config == items  # what a SecAgg+ client reads; a list raises


def test_a_persona_table_sent_with_a_gap_in_its_indices_is_refused():
    items = to_config_items(TrainInstructions(round=1, seed=0, data=simulated_data(PopulationConfig())))
    gap = {k.replace("personas.5.", "personas.7."): v for k, v in items.items()}
    with pytest.raises(ValueError, match="data.population.world.personas must be a list, or a mapping with keys 0..n-1"):
        population_of(from_config_items(gap).data)  # opaque to the product; the simulated node's decoding refuses it


def test_a_custom_world_survives_the_overrides_that_start_a_flower_run(compose_config):
    run = simulated_settings(compose_config("population.world.drift_strength=0", "population.world.genre_moods.pop=calm",
                                              "population.world.personas.0.popularity=0.5"))
    assert run.population.world.personas[0].popularity == 0.5
    assert simulated_settings(compose_config(*flower_overrides(run))) == run
