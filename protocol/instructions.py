"""What the server tells a client each round, and its conversion to and from Flower's flat ConfigRecord.

Config flows one way: Hydra settings (snake_case) -> ``TrainInstructions`` on the server -> a flat ConfigRecord
(kebab-case keys such as ``train.batch-size``) in the message -> ``TrainInstructions`` on the client. Clients
read only the message and their node config, never Hydra.

A simulation also tells its simulated nodes which synthetic population they play (``DataInstructions.population``).
That description is a plain flat mapping here, opaque to the product: ``simulations.federation.device_data`` encodes it
on the server and decodes it on a simulated node, so only ``simulations/`` knows the synthetic world's types.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from model.network.networks import ModelConfig
from model.network.training import LocalTrainConfig
from privacy.distributed_dp import DistributedDiscreteGaussian
from privacy.randomness import check_noise_source
from privacy.record_level import RecordLevelDP


class InstructionError(ValueError):
    """A mapping that does not fit a settings dataclass; the message names the key."""


@dataclass(frozen=True)
class UserLevelInstructions:
    """The server's user-level mechanism as it announces it to the devices, so a device can check it against its own
    privacy policy (``client.privacy_policy``) and keep its own ledger of what each run may cost it: the Gaussian
    noise multiplier on the sum, the Poisson sampling rate, delta, and the rate at which devices are asked to score
    the final model (0: never). Under central DP the server adds the noise, so this is a claim the device holds the
    server to, not a mechanism the device runs. ``min_separation`` > 0 announces DP-FTRL with a banded factor
    (``privacy.banded_release``): no sampling (``sample_rate`` 1), and the device joins rounds at least that many
    apart, which it enforces itself."""

    noise_multiplier: float
    sample_rate: float
    delta: float
    evaluation_rate: float = 0.0
    min_separation: int = 0

    def __post_init__(self) -> None:
        if self.min_separation < 0 or (self.min_separation and self.sample_rate != 1.0):
            raise InstructionError(f"user_level.min_separation must be >= 0, and > 0 only with sample_rate 1 (no "
                                   f"amplification); found {self.min_separation} at {self.sample_rate}.")


@dataclass(frozen=True)
class DistributedInstructions:
    """Under ``privacy=distributed``: the run's public parameters of the distributed discrete Gaussian and the round's
    public rotation seed. The device adds its own noise share from them; it checks first that they carry at least the
    noise the run announced (``client.secagg_client``)."""

    plan: DistributedDiscreteGaussian
    rotation_seed: int


Scalar = Union[int, float, str, bool]
"""A value a ConfigRecord entry holds (and the SecAgg+ path's legacy records too)."""

POPULATION_PREFIX = "data.population."
"""Wire keys under this prefix are ``DataInstructions.population``'s, passed through as they are."""


@dataclass(frozen=True)
class DataInstructions:
    """How prediction examples are cut from a device's log, and (simulation only) which synthetic users it plays.

    Attributes:
        window: events a prediction point may read.
        eval_fraction: the share of the device's most recent points held out for its own evaluation.
        population: a simulated node's synthetic population as flat ``key: scalar`` entries (sent as
            ``data.population.<key>``), encoded and decoded by ``simulations.federation.device_data``; empty (nothing sent)
            outside simulation. The product never reads it: a device trains on its own log.
    """

    window: int = 32
    eval_fraction: float = 0.2
    population: Mapping[str, Scalar] = field(default_factory=dict, hash=False)


ATTACK_KINDS = ("none", "scale", "sign_flip", "nan_arrays", "overflow", "missing_array", "extra_array", "label_flip")
"""What ``AttackInstructions.kind`` may name; the attacks themselves are the simulation's (``simulations.federation.attacks``)."""


@dataclass(frozen=True)
class AttackInstructions:
    """Simulation only: a ``fraction`` of the synthetic users play attack ``kind`` (``simulations.federation.attacks``, a client mod
    only the simulation's ClientApp installs)."""

    kind: str
    fraction: float
    scale: float


@dataclass(frozen=True)
class TrainInstructions:
    """One round's instructions to a client.

    Attributes:
        round: the server round (with the run seed and user id, seeds dropout, augmentation and plain shuffling).
        seed: the run seed. It drives only randomness that protects nothing (dropout, augmentation, shuffling
            without DP): DP-SGD's noise and Poisson batches come from the device's own OS entropy.
        model: architecture of the global model (the client checks the arrays fit it).
        train: local training settings.
        data: how the client builds its examples (and, in simulation, which synthetic population it plays).
        clipping_norm: user-level clipping of the whole update to this L2 norm; None when not user-level DP.
        record: record-level DP-SGD settings; None when off.
        device_dir: where a simulated device keeps its private state (its record-level ledger).
        attack: simulation only: hostile synthetic users and their attack; None (never sent) otherwise. A device
            training on its own log ignores it.
        noise: "secure" or "seeded" (``privacy.noise``). Only a synthetic user obeys "seeded" (DP-SGD noise and
            batches from ``seed``, for reproducible simulations); a device training on its own log ignores it and
            always draws them from its own entropy, so nothing the server sends can predict them.
        run_key: the run's identity across restarts (a resumed run keeps it): a device's ledger counts each run once.
        planned_rounds: the rounds the run's noise is calibrated for; a device joins no round past them.
        user_level: the user-level mechanism the server announces; None without user-level DP.
        distributed: under ``privacy=distributed``, the noise share each device adds to its SecAgg+ contribution.
    """

    round: int
    seed: int
    model: ModelConfig = field(default_factory=ModelConfig)
    train: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    data: DataInstructions = field(default_factory=DataInstructions)
    clipping_norm: Optional[float] = None
    record: Optional[RecordLevelDP] = None
    device_dir: Optional[str] = None
    attack: Optional[AttackInstructions] = None
    noise: str = "secure"
    run_key: str = ""
    planned_rounds: int = 0
    user_level: Optional[UserLevelInstructions] = None
    distributed: Optional[DistributedInstructions] = None

    def __post_init__(self) -> None:
        check_noise_source(self.noise, "noise")
        if self.user_level is not None and (not self.run_key or self.planned_rounds < 1):
            raise ValueError("user-level instructions need run-key (the run's identity) and planned-rounds >= 1: a "
                             f"device keeps its ledger by them; found {self.run_key!r}, {self.planned_rounds}.")


def dataclass_from_dict(cls: type, values: object, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping: unknown keys and wrong types are errors naming the key.

    Ints widen to float fields (one too large for a float is an error); nothing else is converted. A float field
    refuses NaN and Infinity, here once for every settings dataclass. The dataclass's own range check (a plain
    ``ValueError`` from ``__post_init__``) becomes an ``InstructionError``; a typed subclass such as the server's
    ``ConfigError`` passes unchanged. Nested dataclasses and ``Optional`` are supported.
    """
    if not isinstance(values, Mapping):
        raise InstructionError(f"{prefix.rstrip('.') or 'config'} must be a mapping of keys; found {_short(values)}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InstructionError(f"Unknown key {prefix}{unknown[0]}; allowed keys here: {sorted(names)}.")
    kwargs = {name: _convert(hints[name], value, f"{prefix}{name}") for name, value in values.items()}
    group = prefix.rstrip(".") or cls.__name__
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise InstructionError(f"{group}: {error}") from None
    except ValueError as error:  # the dataclass's own range check; a typed subclass (ConfigError ...) passes as is
        if type(error) is not ValueError:
            raise
        text = str(error)  # names the key, the value and the rule, e.g. "train.epochs ... must be >= 1; found 0."
        raise InstructionError(text if text.startswith(prefix or cls.__name__) else f"{group}: {text}") from None


def _convert(hint: Any, value: object, key: str) -> object:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        if len(options) > 1:  # a union of plain types, e.g. ``Scalar``: the value must be one of them, as it is
            return _one_of(options, value, key)
        hint = options[0]
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, f"{key}.")
    if typing.get_origin(hint) in (dict, Mapping):
        return _convert_mapping(typing.get_args(hint)[1], value, key)
    if typing.get_origin(hint) is tuple:
        return _convert_tuple(typing.get_args(hint)[0], value, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise InstructionError(f"{key} must be a finite float; found {_short(value)}, past the largest float "
                                   "(about 1.8e308).") from None
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise InstructionError(f"{key} must be of type {hint.__name__}; found {_short(value)}.")
    if hint is float and not math.isfinite(value):
        raise InstructionError(f"{key} must be a finite number; found {value!r}. NaN and Infinity are refused "
                               "everywhere: they would turn the model's weights or the privacy accounting into NaN.")
    return value


def _one_of(options: list[type], value: object, key: str) -> object:
    if not isinstance(value, tuple(options)):
        names = ", ".join(h.__name__ for h in options)
        raise InstructionError(f"{key} must be one of the types {names}; found {_short(value)}.")
    return _convert(type(value), value, key)  # a float is still checked finite


def _convert_mapping(value_hint: Any, value: object, key: str) -> dict:
    """A plain ``{str: value}`` dict, each value checked against ``value_hint`` (``Any``: left as it is)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InstructionError(f"{key} must be a mapping with string keys; found {_short(value)}.")
    if value_hint is Any:
        return dict(value)
    return {k: _convert(value_hint, v, f"{key}.{k}") for k, v in value.items()}


def _convert_tuple(item_hint: Any, value: object, key: str) -> tuple:
    """A ``tuple[X, ...]`` from a list (Hydra, a ConfigRecord's list of strings or numbers) or, for a tuple of
    dataclasses, from the mapping ``{"0": ..., "1": ...}`` that ``to_config_items`` flattened it to."""
    if isinstance(value, Mapping):
        if set(value) != {str(i) for i in range(len(value))}:
            raise InstructionError(f"{key} must be a list, or a mapping with keys 0..n-1; found keys "
                                   f"{_short(sorted(map(str, value)))}.")
        value = [value[str(i)] for i in range(len(value))]
    if not isinstance(value, (list, tuple)):
        raise InstructionError(f"{key} must be a list; found {_short(value)}.")
    return tuple(_convert(item_hint, item, f"{key}.{i}") for i, item in enumerate(value))


def _short(value: object) -> str:
    """``repr(value)``, cut to 80 characters (a hostile value may be huge)."""
    if isinstance(value, int) and value.bit_length() > 200:  # repr of an int of 4300+ digits raises ValueError
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def to_config_items(instructions: TrainInstructions) -> dict[str, Scalar]:
    """Flatten to ConfigRecord items (``flat_items``)."""
    return flat_items(instructions)


def flat_items(settings: object) -> dict[str, Scalar]:
    """A settings dataclass as flat items: dotted, kebab-case keys; ``None`` values are left out; a tuple becomes one
    key per index (``personas.0.instruments.1``), so every value is a scalar, which the SecAgg+ path's legacy records
    (``common.Scalar``) also carry; a mapping's entries keep their own keys (``data.population.seed``). (An empty
    tuple would leave no key.) ``dataclass_from_dict(cls, nested_items(items))`` is its inverse."""
    items: dict[str, Scalar] = {}

    def walk(obj: object, prefix: str) -> None:
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            key = prefix + f.name.replace("_", "-")
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif isinstance(value, Mapping):
                items.update({f"{key}.{name}": item for name, item in value.items()})
            elif isinstance(value, tuple):
                for index, item in enumerate(value):
                    if dataclasses.is_dataclass(item):
                        walk(item, f"{key}.{index}.")
                    else:
                        items[f"{key}.{index}"] = item
            elif value is not None:
                items[key] = value

    walk(settings, "")
    return items


def from_config_items(items: Mapping[str, object]) -> TrainInstructions:
    """Inverse of ``to_config_items``; raises ``InstructionError`` naming any key that does not fit."""
    population = {str(k)[len(POPULATION_PREFIX):]: v for k, v in items.items() if str(k).startswith(POPULATION_PREFIX)}
    nested = nested_items({k: v for k, v in items.items() if not str(k).startswith(POPULATION_PREFIX)})
    if population:  # opaque to the product: its keys pass as they are
        data = nested.setdefault("data", {})
        if not isinstance(data, dict) or "population" in data:
            raise InstructionError(f"data or data.population is a value and also a group of keys "
                                   f"({POPULATION_PREFIX}...); send one or the other.")
        data["population"] = population
    return dataclass_from_dict(TrainInstructions, nested)


def nested_items(items: Mapping[str, object]) -> dict[str, Any]:
    """Dotted kebab-case keys (``train.batch-size``) as nested snake_case mappings (``{"train": {"batch_size": ..}}``).

    Raises:
        InstructionError: if a key is both a value and a group of keys, or is given as kebab-case and snake_case.
    """
    nested: dict[str, Any] = {}
    groups: set[tuple[str, ...]] = set()  # paths that hold keys, told apart from a value that is a dict
    for key, value in items.items():
        path = tuple(part.replace("-", "_") for part in str(key).split("."))
        node = nested
        for depth in range(1, len(path)):
            name, group = path[depth - 1], path[:depth]
            if name in node and group not in groups:
                raise InstructionError(f"{'.'.join(group)} is a value ({_short(node[name])}) and also a group of keys "
                                       f"({key}); send one or the other.")
            groups.add(group)
            node = node.setdefault(name, {})
        if path in groups:
            raise InstructionError(f"{key} is a group of keys and also a value ({_short(value)}); send one or the other.")
        if path[-1] in node:
            raise InstructionError(f"{key} is given twice (as kebab-case and snake_case); send it once.")
        node[path[-1]] = value
    return nested
