"""The simulation's settings schema: the server's ``RunSettings`` with the synthetic world typed and validated.

``server.settings.PopulationSettings`` keeps ``population.world`` as plain data (the server never reads it);
``SimulatedRunSettings`` narrows it to a ``simulations.population.world.World``, so an impossible world fails when the config is
composed, naming the key (``population.world.prompt_mix: ...``). Every simulation entry point validates with
``simulated_settings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig

from protocol.instructions import dataclass_from_dict
from server.preflight import check_can_start
from server.settings import PopulationSettings, RunSettings, settings_from_config
from simulations.population.population import MAX_USERS, PopulationConfig
from simulations.population.world import World
from validation.config import ConfigError


@dataclass(frozen=True)
class SimulatedPopulationSettings(PopulationSettings):
    world: World = World()


@dataclass(frozen=True)
class SimulatedRunSettings(RunSettings):
    population: SimulatedPopulationSettings = field(default_factory=SimulatedPopulationSettings)


def simulated_settings(cfg: DictConfig | dict) -> SimulatedRunSettings:
    """``server.settings.settings_from_config`` with the simulation's schema."""
    return settings_from_config(cfg, schema=SimulatedRunSettings)  # type: ignore[return-value]


def world_of(settings: RunSettings) -> World:
    """The synthetic world of ``settings``: typed already (``SimulatedRunSettings``) or read from the server's plain
    mapping (an empty one is today's world).

    Raises:
        ConfigError: if the mapping does not describe a world, naming the key.
    """
    world = settings.population.world
    if isinstance(world, World):
        return world
    try:
        return dataclass_from_dict(World, world, "population.world.")
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_simulation_can_start(settings: RunSettings, *, planning: bool = False) -> None:
    """``server.preflight.check_can_start`` (``planning``: passed on), after checking that the synthetic population is
    one ``simulations.population.population`` can generate; raises ``ConfigError`` naming the key."""
    p = settings.population
    total = p.num_users + p.eval_users
    if total > MAX_USERS:
        raise ConfigError(f"population.num_users + population.eval_users must be <= {MAX_USERS:,} (the largest "
                          f"population simulations.population generates); found {p.num_users} + {p.eval_users}.")
    try:
        population_config(settings)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"population.{error}") from None
    check_can_start(settings, planning=planning)


def population_config(settings: RunSettings) -> PopulationConfig:
    """The synthetic population of a run: its federation users, then its held-out users."""
    p = settings.population
    return PopulationConfig(seed=p.seed, num_users=p.num_users + p.eval_users, days=p.days, world=world_of(settings))
