"""The private log of a simulated device: a synthetic user's events, cut into train and held-out examples.

In simulation a node's user id is its partition id. Everything is cached per worker process with bounded size,
so a worker that serves thousands of users keeps only the most recent ones (memory grows with the clients of a
round, not with the population).
"""

from __future__ import annotations

from functools import lru_cache

from client.instructions import DataInstructions
from model.encoding import Examples, build_examples, split_recent
from simulations.population import Population, PopulationConfig
from simulations.world import World

USERS_CACHED_PER_WORKER = 256


@lru_cache(maxsize=8)
def population(seed: int, size: int, days: int, world: World = World()) -> Population:
    return Population(PopulationConfig(seed=seed, num_users=size, days=days, world=world))


@lru_cache(maxsize=USERS_CACHED_PER_WORKER)
def _user_examples(seed: int, size: int, days: int, world: World, user_id: int, window: int,
                   eval_fraction: float) -> tuple[Examples, Examples]:
    events = population(seed, size, days, world).user(user_id).events()
    return split_recent(build_examples(events, window), eval_fraction)


def device_examples(data: DataInstructions, user_id: int) -> tuple[Examples, Examples]:
    """(training examples, most recent held-out examples) of simulated user ``user_id`` of the world ``data`` names."""
    return _user_examples(
        data.population_seed, data.population_size, data.population_days, data.world, user_id, data.window,
        data.eval_fraction,
    )
