"""The two halves of a Gaussian mechanism on model updates: constrain sensitivity (clip), then add noise.

Kept apart so clipping can run on the device (with secure aggregation the server only sees the sum) and noise on
the server, as in DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
Algorithm 1). Updates are ``dict[name, np.ndarray]`` so this module needs neither torch nor Flower.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from privacy.randomness import GaussianNoise

Update = dict[str, np.ndarray]


def global_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all arrays of an update taken together (float64 accumulation)."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update.values()))


def clip_update(update: Mapping[str, np.ndarray], max_norm: float) -> tuple[Update, float, bool]:
    """Scale ``update`` to L2 norm at most ``max_norm``: returns (clipped update, original norm, was it clipped).

    A zero update is returned unchanged (no division by a zero norm).
    """
    if not max_norm > 0.0:
        raise ValueError(f"The clipping norm should be a positive value; found {max_norm}.")
    norm = global_norm(update)
    if norm <= max_norm:
        return {k: np.asarray(v, dtype=np.float32).copy() for k, v in update.items()}, norm, False
    scale = max_norm / norm
    return {k: (np.asarray(v, dtype=np.float64) * scale).astype(np.float32) for k, v in update.items()}, norm, True


def add_gaussian_noise(total: Mapping[str, np.ndarray], std: float, noise: GaussianNoise) -> Update:
    """``total`` plus independent N(0, std^2) noise from ``noise`` on every coordinate (added in float64, returned
    as float32, the model's precision)."""
    if std < 0.0:
        raise ValueError(f"The noise standard deviation should be non-negative; found {std}.")
    if std == 0.0:
        return {k: np.asarray(v, dtype=np.float32).copy() for k, v in total.items()}
    return {k: (np.asarray(v, dtype=np.float64) + noise.sample(np.shape(v), std)).astype(np.float32)
            for k, v in total.items()}


def dp_sgd_schedule(*, num_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """DP-SGD's (sample rate, steps) for one local training run: Poisson rate q = batch_size / n (at most 1) and
    ``epochs`` expected passes, ceil(1/q) steps each. The one place both the training loop and the device's ledger
    read them from, so the ledger records the mechanism that ran."""
    if num_examples < 1 or batch_size < 1 or epochs < 1:
        raise ValueError(f"num_examples, batch_size and epochs must be >= 1; found {num_examples}, {batch_size}, {epochs}.")
    sample_rate = min(1.0, batch_size / num_examples)
    return sample_rate, epochs * math.ceil(1.0 / sample_rate)
