"""Hostile simulated clients: who is malicious, and what a malicious client sends instead of its honest update.

Simulation only. Which synthetic users are malicious depends on (run seed, user id, fraction) alone, so the
server, the clients and a benchmark all agree without talking, and raising the fraction only adds users (the
malicious set at 0.1 is inside the one at 0.2). The attacks:

- ``scale``: the update (new - global) multiplied by ``scale`` (a boosted update, Bhagoji et al. 2019);
- ``sign_flip``: the update negated (the client pushes the model away from its data);
- ``nan_arrays``: NaN in every array (a malformed reply: the server must reject it; not named ``nan``, which
  Hydra's override parser reads as a float);
- ``overflow``: every update array as float64 holding 1e300, finite as sent and Inf in the model's float32 (a
  malformed reply: the server must check values after the cast);
- ``missing_array`` / ``extra_array``: one of the model's arrays left out / one array the model lacks added
  (malformed replies);
- ``label_flip``: the client trains honestly on its examples with every target genre mapped by a fixed
  permutation (data poisoning; Tolpegin et al. 2020); its reply is well formed.

The attacks are a Flower client mod (``attack_mod``) that only the simulation's ClientApp
(``simulations.federation.simulation_client_app``) installs: a device's ClientApp never attacks, whatever the server
sends (and the server refuses ``simulation.attack`` outside simulation).
"""

from __future__ import annotations

import hashlib
from contextvars import ContextVar

import numpy as np
import torch
from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from model.features.examples import Examples
from model.log.vocab import GENRES
from protocol.instructions import ATTACK_KINDS, AttackInstructions, from_config_items
from protocol.node_config import PARTITION_ID
from protocol.records import from_array_record, slot_users, to_array_record
from protocol.reply_layout import CONTRIBUTION, STATISTICS_ARRAY

Arrays = dict[str, np.ndarray]

MALFORMED_KINDS = ("nan_arrays", "overflow", "missing_array", "extra_array")
"""Attacks whose reply breaks the reply contract; the server rejects and counts them."""
EXTRA_ARRAY_NAME = "backdoor.weight"
LABEL_PERMUTATION = tuple(len(GENRES) - 1 - g for g in range(len(GENRES)))
"""Genre g is relabelled as genre 7 - g: a fixed derangement of the 8 genres (no genre keeps its label)."""


def is_malicious(seed: int, user_id: int, fraction: float) -> bool:
    """Whether simulated user ``user_id`` of a run with ``seed`` is malicious at ``fraction``.

    Each (seed, user) pair maps to a fixed uniform number u in [0, 1) by SHA-256 (any integers, negative ones
    too); the user is malicious when u < fraction. So the choice needs nothing but its three arguments, a fraction
    of 0 or 1 makes nobody or everybody malicious, and a larger fraction keeps every user a smaller one chose.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1]; found {fraction}.")
    digest = hashlib.sha256(f"fedpref-attack:{seed}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def flip_labels(examples: Examples) -> Examples:
    """``examples`` with every target genre g replaced by ``LABEL_PERMUTATION[g]``; inputs unchanged."""
    permutation = torch.tensor(LABEL_PERMUTATION, dtype=examples.targets.dtype)
    return Examples(examples.x, examples.lengths, permutation[examples.targets], examples.times)


def scaled(update: Arrays, factor: float) -> Arrays:
    """The update multiplied by ``factor`` (-1 flips its sign)."""
    return {name: (np.float32(factor) * np.asarray(value, dtype=np.float32)).astype(np.float32)
            for name, value in update.items()}


def with_nan(arrays: Arrays) -> Arrays:
    return {name: np.full_like(np.asarray(value, dtype=np.float32), np.nan) for name, value in arrays.items()}


def overflowing(arrays: Arrays) -> Arrays:
    """Every array as float64 holding 1e300: finite as sent, Inf once cast to the model's float32."""
    return {name: np.full(np.shape(value), 1e300, dtype=np.float64) for name, value in arrays.items()}


def without_one_array(arrays: Arrays) -> Arrays:
    """Every array but the last by name."""
    dropped = sorted(arrays)[-1]
    return {name: value for name, value in arrays.items() if name != dropped}


def with_extra_array(arrays: Arrays) -> Arrays:
    return {**arrays, EXTRA_ARRAY_NAME: np.zeros(8, dtype=np.float32)}


def corrupt(kind: str, contribution: Arrays, *, scale: float) -> Arrays:
    """The contribution (update arrays and ``STATISTICS_ARRAY``) a malicious client of ``kind`` replies with instead
    of its honest ``contribution``; the statistics stay the honest ones.

    ``label_flip`` and ``none`` return ``contribution`` unchanged (label flipping acts on the data, before training).
    """
    if kind not in ATTACK_KINDS:
        raise ValueError(f"attack kind must be one of {list(ATTACK_KINDS)}; found {kind!r}.")
    update = {name: value for name, value in contribution.items() if name != STATISTICS_ARRAY}
    statistics = {STATISTICS_ARRAY: contribution[STATISTICS_ARRAY]}
    if kind == "scale":
        return {**scaled(update, scale), **statistics}
    if kind == "sign_flip":
        return {**scaled(update, -1.0), **statistics}
    if kind == "nan_arrays":
        return with_nan(contribution)
    if kind == "overflow":
        return {**overflowing(update), **statistics}
    if kind == "missing_array":
        return {**without_one_array(update), **statistics}
    if kind == "extra_array":
        return with_extra_array(contribution)
    return contribution


def attack_of(attack: AttackInstructions | None, *, seed: int, user_id: int) -> str:
    """The attack kind synthetic user ``user_id`` plays: ``"none"`` unless it is chosen as malicious."""
    if attack is None or attack.kind == "none":
        return "none"
    if attack.kind not in ATTACK_KINDS:
        raise ValueError(f"attack kind must be one of {list(ATTACK_KINDS)}; found {attack.kind!r}.")
    return attack.kind if is_malicious(seed, user_id, attack.fraction) else "none"


_LABEL_FLIPPERS: ContextVar[frozenset[int]] = ContextVar("label_flippers", default=frozenset())
"""The users of the train message being handled that play ``label_flip`` (set by ``attack_mod`` around the app)."""


def poisoned_training_examples(examples: Examples, user_id: int) -> Examples:
    """The training examples synthetic user ``user_id`` trains on: its own, or with flipped labels while
    ``attack_mod`` handles a train message in which it plays ``label_flip`` (data poisoning acts before training)."""
    return flip_labels(examples) if user_id in _LABEL_FLIPPERS.get() else examples


def _user_ids(msg: Message, context: Context) -> list[int] | None:
    """The synthetic users a message is for, in the order of the reply's parts; None if they cannot be named (the
    ClientApp then answers with its own error)."""
    try:
        users = slot_users(msg.content)
        if users is not None:
            return users
        value = context.node_config.get(PARTITION_ID)
        return None if value is None or isinstance(value, bool) else [int(value)]  # type: ignore[arg-type]
    except ValueError:
        return None


def attack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower client mod: a synthetic user chosen as malicious (``is_malicious``) plays the attack the round's
    instructions name; everyone else, and every message but a plain train message, passes through untouched.

    ``label_flip`` poisons the user's training examples (``poisoned_training_examples``, read by the simulation's data
    source while the app runs); the other kinds replace the user's contribution (``corrupt``). Only the simulation's
    ClientApp installs it: a device's ClientApp never attacks, whatever the server sends.
    """
    if msg.metadata.message_type != MessageType.TRAIN or "config" not in msg.content.config_records:
        return call_next(msg, context)  # evaluation, ping, and the stages of a SecAgg+ round
    try:
        instructions = from_config_items(dict(msg.content["config"]))
    except ValueError:
        return call_next(msg, context)  # the ClientApp replies with the error
    users = _user_ids(msg, context)
    if instructions.attack is None or users is None:
        return call_next(msg, context)
    kinds = [attack_of(instructions.attack, seed=instructions.seed, user_id=user) for user in users]
    token = _LABEL_FLIPPERS.set(frozenset(u for u, kind in zip(users, kinds) if kind == "label_flip"))
    try:
        reply = call_next(msg, context)
    finally:
        _LABEL_FLIPPERS.reset(token)
    if reply.has_error():
        return reply
    slot = slot_users(msg.content) is not None
    for position, kind in enumerate(kinds):
        name = f"{CONTRIBUTION}.{position}" if slot else CONTRIBUTION
        if kind in ("none", "label_flip") or name not in reply.content.array_records:
            continue
        honest = from_array_record(reply.content.array_records[name])
        reply.content[name] = to_array_record(corrupt(kind, honest, scale=instructions.attack.scale))
    return reply
