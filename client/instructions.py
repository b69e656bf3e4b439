"""What the server tells a client each round, and its conversion to and from Flower's flat ConfigRecord.

Config flows one way: Hydra settings (snake_case) -> ``TrainInstructions`` on the server -> a flat ConfigRecord
(kebab-case keys such as ``train.batch-size``) in the message -> ``TrainInstructions`` on the client. Clients
read only the message and their node config, never Hydra.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from model.networks import ModelConfig
from model.training import LocalTrainConfig


class InstructionError(ValueError):
    """A mapping that does not fit a settings dataclass; the message names the key."""


@dataclass(frozen=True)
class RecordLevelInstructions:
    """DP-SGD on the device and the device's own budget over every round it trains."""

    noise_multiplier: float
    max_grad_norm: float
    target_epsilon: float
    delta: float


@dataclass(frozen=True)
class DataInstructions:
    """Where a simulated client's log comes from, and how prediction examples are cut from it."""

    population_seed: int = 0
    population_size: int = 1200
    population_days: int = 28
    window: int = 32
    eval_fraction: float = 0.2


@dataclass(frozen=True)
class TrainInstructions:
    """One round's instructions to a client.

    Attributes:
        round: the server round (seeds the client's local randomness with the run seed and user id).
        seed: the run seed.
        model: architecture of the global model (the client checks the arrays fit it).
        train: local training settings.
        data: how the client builds its examples.
        clipping_norm: user-level clipping of the whole update to this L2 norm; None when not user-level DP.
        record: record-level DP-SGD settings; None when off.
        device_dir: where a simulated device keeps its private state (its record-level ledger).
    """

    round: int
    seed: int
    model: ModelConfig = field(default_factory=ModelConfig)
    train: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    data: DataInstructions = field(default_factory=DataInstructions)
    clipping_norm: Optional[float] = None
    record: Optional[RecordLevelInstructions] = None
    device_dir: Optional[str] = None


def dataclass_from_dict(cls: type, values: object, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping: unknown keys and wrong types are errors naming the key.

    Ints widen to float fields; nothing else is converted. Nested dataclasses and ``Optional`` are supported.
    """
    if not isinstance(values, Mapping):
        raise InstructionError(f"{prefix.rstrip('.') or 'config'} must be a mapping of keys; found {values!r}.")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InstructionError(f"Unknown key {prefix}{unknown[0]}; allowed keys here: {sorted(names)}.")
    kwargs = {name: _convert(hints[name], value, f"{prefix}{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise InstructionError(f"{prefix.rstrip('.') or cls.__name__}: {error}") from None


def _convert(hint: Any, value: object, key: str) -> object:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        hint = next(h for h in typing.get_args(hint) if h is not type(None))
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(hint, value, f"{key}.")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise InstructionError(f"{key} must be of type {hint.__name__}; found {value!r}.")
    return value


def to_config_items(instructions: TrainInstructions) -> dict[str, int | float | str | bool]:
    """Flatten to ConfigRecord items: dotted, kebab-case keys; ``None`` values are left out."""
    items: dict[str, int | float | str | bool] = {}

    def walk(obj: object, prefix: str) -> None:
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            key = prefix + f.name.replace("_", "-")
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif value is not None:
                items[key] = value

    walk(instructions, "")
    return items


def from_config_items(items: Mapping[str, object]) -> TrainInstructions:
    """Inverse of ``to_config_items``; raises ``InstructionError`` naming any key that does not fit."""
    nested: dict[str, Any] = {}
    for key, value in items.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part.replace("-", "_"), {})
        node[leaf.replace("-", "_")] = value
    return dataclass_from_dict(TrainInstructions, nested)
