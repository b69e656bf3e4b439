"""The simulation's data source: a simulated node plays a synthetic user, its events cut into train and held-out examples.

The server describes the synthetic population in every message (``DataInstructions.population``, flat entries
``data.population.seed``, ``data.population.world.personas.0.name`` ...): ``population_items`` encodes a
``PopulationConfig`` into those entries with the instructions' own flattening, and ``population_of`` decodes them
(unknown keys, wrong types and out-of-range values are errors naming ``data.population.<key>``). The product's
``client/`` and ``server/`` carry the entries without reading them, so only ``simulations/`` knows the world's types.

``simulated_device_data`` is the ``client.device_data.DataSource`` of the simulation's ClientApp
(``simulations.federation.client_app``): node config ``partition-id=N`` (set by Flower's simulation, or per user by
a node slot) plays synthetic user N; ``log-db`` is read as on a device. Everything is cached per worker process
with bounded size, so a worker that serves thousands of users keeps only the most recent ones (memory grows with
the clients of a round, not with the population).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from client.device_data import DeviceData, DeviceDataError, device_data, ledger_path_of
from protocol.instructions import (
    DataInstructions,
    InstructionError,
    Scalar,
    dataclass_from_dict,
    flat_items,
    nested_items,
)
from model.features.encoding import Examples, build_examples, split_recent
from protocol.node_config import LOG_DB, PARTITION_ID
from simulations.federation.attacks import poisoned_training_examples
from simulations.population.population import Population, PopulationConfig
from simulations.population.world import World

USERS_CACHED_PER_WORKER = 256


def population_items(config: PopulationConfig) -> dict[str, Scalar]:
    """``config`` as the flat entries of ``DataInstructions.population``."""
    return flat_items(config)


def population_of(data: DataInstructions) -> PopulationConfig:
    """The synthetic population ``data`` describes.

    Raises:
        InstructionError: if it describes none (a message to a device) or describes it wrongly, naming the key.
    """
    if not data.population:
        raise InstructionError("data.population is empty: the server described no synthetic population, so a "
                               "simulated node has no user to play.")
    return _decoded(tuple(sorted(data.population.items())))


@lru_cache(maxsize=8)
def _decoded(items: tuple[tuple[str, Scalar], ...]) -> PopulationConfig:
    return dataclass_from_dict(PopulationConfig, nested_items(dict(items)), "data.population.")


def simulated_data(config: PopulationConfig, *, window: int = 32, eval_fraction: float = 0.2) -> DataInstructions:
    """The data instructions of a simulation over the population ``config``."""
    return DataInstructions(window=window, eval_fraction=eval_fraction, population=population_items(config))


@lru_cache(maxsize=8)
def population_from(config: PopulationConfig) -> Population:
    return Population(config)


def population(seed: int, size: int, days: int, world: World = World()) -> Population:
    """The (cached) population of ``size`` users."""
    return population_from(PopulationConfig(seed=seed, num_users=size, days=days, world=world))


@lru_cache(maxsize=USERS_CACHED_PER_WORKER)
def _user_examples(config: PopulationConfig, user_id: int, window: int, eval_fraction: float) -> tuple[Examples, Examples]:
    events = population_from(config).user(user_id).events()
    return split_recent(build_examples(events, window), eval_fraction)


def device_examples(data: DataInstructions, user_id: int) -> tuple[Examples, Examples]:
    """(training examples, most recent held-out examples) of simulated user ``user_id`` of the population ``data``
    describes."""
    return _user_examples(population_of(data), user_id, data.window, data.eval_fraction)


def _partition_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DeviceDataError(f"node config '{PARTITION_ID}' must be a whole number; found {value!r}.")
    try:
        return int(value)
    except ValueError:
        raise DeviceDataError(f"node config '{PARTITION_ID}' must be a whole number; found {value!r}.") from None


def simulated_device_data(data: DataInstructions, node_config: Mapping[str, object],
                          device_dir: str | None = None) -> DeviceData:
    """A simulated node's examples: synthetic user ``partition-id``, or the log ``log-db`` names as on a device.

    A synthetic user keeps its ledger in the run's ``device_dir`` (``ledger-path`` overrides it). Its training
    examples are the ones it plays this round: an attack of ``simulations.federation.attacks`` may poison them.

    Raises:
        DeviceDataError: if the node config names both or neither, or a ``partition-id`` that is not a whole number.
    """
    has_log, has_partition = node_config.get(LOG_DB) not in (None, ""), PARTITION_ID in node_config
    if has_log and has_partition:
        raise DeviceDataError(
            f"node config sets both '{LOG_DB}' and '{PARTITION_ID}'; a device trains on one source: its log "
            f"({LOG_DB}=PATH) on a real device, a synthetic user ({PARTITION_ID}=N) in simulation."
        )
    if not has_partition:
        return device_data(data, node_config, device_dir)
    user_id = _partition_id(node_config[PARTITION_ID])
    train, held_out = device_examples(data, user_id)
    ledger_path = ledger_path_of(node_config)
    if ledger_path is None and device_dir is not None:
        ledger_path = Path(device_dir) / f"user-{user_id}.ledger.json"
    return DeviceData(poisoned_training_examples(train, user_id), held_out, user_id, ledger_path,
                      f"synthetic user {user_id}", synthetic=True)
