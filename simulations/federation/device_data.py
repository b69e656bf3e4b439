"""The simulation's data source: a simulated node plays a synthetic user, its events cut into train and held-out examples.

The server describes the synthetic population in every message (``DataInstructions.population``, flat entries
``data.population.seed``, ``data.population.world.personas.0.name`` ...): ``population_items`` encodes a
``PopulationConfig`` into those entries with the instructions' own flattening, and ``population_of`` decodes them
(unknown keys, wrong types and out-of-range values are errors naming ``data.population.<key>``). The product's
``client/`` and ``server/`` carry the entries without reading them, so only ``simulations/`` knows the world's types.

``simulated_device_data`` is the ``client.data_source.DataSource`` of the simulation's ClientApp
(``simulations.federation.simulation_client_app``): node config ``partition-id=N`` (set by Flower's simulation, or per
user by a node slot) plays synthetic user N; ``log-db`` is read as on a device. Everything is cached per worker process
with bounded size, so a worker that serves thousands of users keeps only the most recent ones. A user is kept in its
compact form (``model.features.examples.EncodedLog``: encoded events and prediction points, within ``USER_CACHE_BYTES``
in all) and its windows are cut anew on each use: they repeat each event up to ``window`` times, so the same memory
holds ~7 times as many users as it would hold windows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from client.data_source import DeviceData, DeviceDataError, device_data, ledger_path_of
from protocol.instructions import (
    DataInstructions,
    InstructionError,
    Scalar,
    dataclass_from_dict,
    flat_items,
    nested_items,
)
from model.features.examples import EncodedLog, Examples, encode_log, split_recent, windows
from protocol.node_config import LOG_DB, PARTITION_ID
from simulations.federation.attacks import poisoned_training_examples
from simulations.population.population import Population, PopulationConfig
from simulations.population.world import World

USER_CACHE_BYTES = 150 * 2**20
"""Memory for the encoded logs of the users a worker played (``_EncodedLogs``). A 28-day log is ~0.13 MB, so ~1,250
users fit: a default run's whole population (1,000), so each worker builds a user once, however rounds are spread."""


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


class _EncodedLogs:
    """The encoded logs of the users a worker played last, least recently used first out, within ``budget`` bytes
    (the newest one stays even if larger). Safe to share between threads."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.nbytes = 0
        self._logs: OrderedDict[tuple[PopulationConfig, int], EncodedLog] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, config: PopulationConfig, user_id: int) -> EncodedLog:
        """User ``user_id``'s encoded log, generated and encoded if not kept."""
        key = (config, user_id)
        with self._lock:
            log = self._logs.get(key)
            if log is not None:
                self._logs.move_to_end(key)
                return log
        log = encode_log(population_from(config).user(user_id).events())
        with self._lock:
            if key not in self._logs:
                self._logs[key] = log
                self.nbytes += log.nbytes
            while self.nbytes > self.budget and len(self._logs) > 1:
                self.nbytes -= self._logs.popitem(last=False)[1].nbytes
        return log

    def clear(self) -> None:
        with self._lock:
            self._logs.clear()
            self.nbytes = 0


_encoded_logs = _EncodedLogs(USER_CACHE_BYTES)


def device_examples(data: DataInstructions, user_id: int) -> tuple[Examples, Examples]:
    """(training examples, most recent held-out examples) of simulated user ``user_id`` of the population ``data``
    describes; new tensors on each call, cut from the user's cached encoded log."""
    log = _encoded_logs.get(population_of(data), user_id)
    return split_recent(windows(log, data.window), data.eval_fraction)


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
                      f"synthetic user {user_id}", synthetic=True, policy=None)
