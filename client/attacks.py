"""Hostile simulated clients: who is malicious, and what a malicious client sends instead of its honest update.

Simulation only. Which synthetic users are malicious depends on (run seed, user id, fraction) alone, so the
server, the clients and a benchmark all agree without talking, and raising the fraction only adds users (the
malicious set at 0.1 is inside the one at 0.2). The attacks:

- ``scale``: the update (new - global) multiplied by ``scale`` (a boosted update, Bhagoji et al. 2019);
- ``sign_flip``: the update negated (the client pushes the model away from its data);
- ``nan_arrays``: NaN in every array (a malformed reply: the server must reject it; not named ``nan``, which
  Hydra's override parser reads as a float);
- ``missing_array`` / ``extra_array``: one of the model's arrays left out / one array the model lacks added
  (malformed replies);
- ``label_flip``: the client trains honestly on its examples with every target genre mapped by a fixed
  permutation (data poisoning; Tolpegin et al. 2020); its reply is well formed.

A real device never attacks: ``client_app`` passes ``simulated=False`` for a device training on its own log, and
then the instructions' attack is ignored (the server also refuses the option outside simulation).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from client.device_ledger import DeviceLedger
from client.instructions import AttackInstructions, TrainInstructions
from client.local_update import LocalUpdate, local_update
from model.encoding import Examples
from model.vocab import GENRES

Arrays = dict[str, np.ndarray]

ATTACK_KINDS = ("none", "scale", "sign_flip", "nan_arrays", "missing_array", "extra_array", "label_flip")
MALFORMED_KINDS = ("nan_arrays", "missing_array", "extra_array")
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


def scaled(global_arrays: Arrays, arrays: Arrays, factor: float) -> Arrays:
    """``global + factor * (arrays - global)``: the update multiplied by ``factor`` (-1 flips its sign)."""
    out = {}
    for name, value in arrays.items():
        base = np.asarray(global_arrays[name], dtype=np.float32)
        out[name] = (base + np.float32(factor) * (np.asarray(value, dtype=np.float32) - base)).astype(np.float32)
    return out


def with_nan(arrays: Arrays) -> Arrays:
    return {name: np.full_like(np.asarray(value, dtype=np.float32), np.nan) for name, value in arrays.items()}


def without_one_array(arrays: Arrays) -> Arrays:
    """Every array but the last by name."""
    dropped = sorted(arrays)[-1]
    return {name: value for name, value in arrays.items() if name != dropped}


def with_extra_array(arrays: Arrays) -> Arrays:
    return {**arrays, EXTRA_ARRAY_NAME: np.zeros(8, dtype=np.float32)}


def corrupt(kind: str, global_arrays: Arrays, arrays: Arrays, *, scale: float) -> Arrays:
    """The arrays a malicious client of ``kind`` replies with instead of its honest ``arrays``.

    ``label_flip`` and ``none`` return ``arrays`` unchanged (label flipping acts on the data, before training).
    """
    if kind not in ATTACK_KINDS:
        raise ValueError(f"attack kind must be one of {list(ATTACK_KINDS)}; found {kind!r}.")
    if kind == "scale":
        return scaled(global_arrays, arrays, scale)
    if kind == "sign_flip":
        return scaled(global_arrays, arrays, -1.0)
    if kind == "nan_arrays":
        return with_nan(arrays)
    if kind == "missing_array":
        return without_one_array(arrays)
    if kind == "extra_array":
        return with_extra_array(arrays)
    return arrays


def attack_of(attack: AttackInstructions | None, *, seed: int, user_id: int, simulated: bool) -> str:
    """The attack kind this client plays: ``"none"`` unless it is a simulated user chosen as malicious."""
    if attack is None or not simulated or attack.kind == "none":
        return "none"
    if attack.kind not in ATTACK_KINDS:
        raise ValueError(f"attack kind must be one of {list(ATTACK_KINDS)}; found {attack.kind!r}.")
    return attack.kind if is_malicious(seed, user_id, attack.fraction) else "none"


def update_as_instructed(global_arrays: Arrays, instructions: TrainInstructions, examples: Examples,
                         ledger: DeviceLedger, user_id: int, *, simulated: bool) -> LocalUpdate:
    """``client.local_update.local_update``, played honestly or, for a malicious simulated user, as its attack.

    The metrics stay the honest ones (an attacker mimics an honest reply); a declined round is never corrupted.
    """
    kind = attack_of(instructions.attack, seed=instructions.seed, user_id=user_id, simulated=simulated)
    if kind == "label_flip":
        examples = flip_labels(examples)
    update = local_update(global_arrays, instructions, examples, ledger, user_id, simulated=simulated)
    if kind in ("none", "label_flip") or update.declined:
        return update
    scale = instructions.attack.scale  # type: ignore[union-attr]
    return LocalUpdate(corrupt(kind, global_arrays, update.arrays, scale=scale), update.metrics)
