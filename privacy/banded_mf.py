"""DP-FTRL with a banded matrix factorisation: correlated noise that needs no sampling.

Choquette-Choo, McMahan, Rush & Thakurta 2023 ("Multi-Epoch Matrix Factorization Mechanisms for Private Machine
Learning"; "(Amplified) Banded Matrix Factorization", NeurIPS 2023). The server model after round t is
``theta_0 + lr * sum_{s<=t} mean_s``: the prefix sums ``A X`` of the rounds' summed contributions ``X`` (one row a
round; ``A`` the lower-triangular all-ones workload). Write ``A = B C``, release ``C X + Z`` with Z i.i.d. Gaussian, and
post-process it into ``A X + B Z``. Round by round that is the plain update with correlated noise
``(C^-1 Z)_t`` added to the sum, which later rounds partly cancel: the model's error is ``B Z`` instead of ``A Z``.

Sensitivity without sampling. ``C`` is lower triangular with ``bands`` bands (``C[i, j] = 0`` unless
``0 <= i - j < bands``) and unit column norms. A device that joins rounds at least ``bands`` apart touches columns
whose supports are disjoint, so k joined rounds move ``C X`` by at most ``sqrt(k) * S`` (S the bound on one
contribution, ``banded_sensitivity``): the whole run is one Gaussian mechanism on ``C X``, accounted as k releases of
the Gaussian mechanism with no amplification (sample rate 1). Who the server picks is then irrelevant to the guarantee;
the device enforces the separation itself (``client.privacy_policy``).

The factor: the banded square root of ``A`` (Kalinin & Lampert 2024: the Toeplitz coefficients of ``(1 - x)^-1/2``
truncated to ``bands``), refined by L-BFGS on Choquette-Choo et al.'s objective ``||A C^-1||_F^2`` over the band's
entries with every column normalised (``banded_factor``).
"""

from __future__ import annotations

import math
from collections import deque
from functools import lru_cache

import numpy as np


def prefix_sum_workload(rounds: int) -> np.ndarray:
    """A: the lower-triangular all-ones matrix (row t sums rounds 1..t), what SGD's iterates are of the updates."""
    return np.tril(np.ones((rounds, rounds)))


def participations(rounds: int, bands: int) -> int:
    """k: the most rounds of ``rounds`` a device can join when its rounds are at least ``bands`` apart."""
    return math.ceil(rounds / bands)


def banded_sqrt_factor(rounds: int, bands: int) -> np.ndarray:
    """The banded square root of the prefix-sum workload: Toeplitz, ``C[i, j] = c_{i-j}`` for ``i - j < bands`` with
    ``c_m = binom(2m, m) / 4^m`` (the coefficients of ``(1 - x)^-1/2``), scaled so its largest column norm is 1."""
    _check(rounds, bands)
    c = np.ones(bands)
    for m in range(1, bands):
        c[m] = c[m - 1] * (2 * m - 1) / (2 * m)
    factor = sum(np.diag(np.full(rounds - m, c[m]), -m) for m in range(bands))
    return factor / np.linalg.norm(factor, axis=0).max()


@lru_cache(maxsize=16)
def _banded_factor(rounds: int, bands: int, iterations: int) -> np.ndarray:
    import torch

    start = torch.from_numpy(banded_sqrt_factor(rounds, bands))
    mask = torch.from_numpy(band_mask(rounds, bands))
    workload = torch.from_numpy(prefix_sum_workload(rounds))
    entries = (start * mask).clone().requires_grad_(True)

    def normalised(raw: torch.Tensor) -> torch.Tensor:
        banded = raw * mask
        return banded / torch.linalg.vector_norm(banded, dim=0, keepdim=True)

    def loss() -> torch.Tensor:
        factor = normalised(entries)  # unit columns: the sensitivity is the same for every candidate
        return torch.linalg.solve_triangular(factor, workload, upper=False, left=False).square().sum()

    optimizer = torch.optim.LBFGS([entries], max_iter=iterations, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(closure)
    factor = normalised(entries.detach()).numpy()
    if not (np.all(np.isfinite(factor)) and np.all(np.diag(factor) > 0.0)
            and factorization_error(factor) <= factorization_error(banded_sqrt_factor(rounds, bands))):
        return banded_sqrt_factor(rounds, bands)  # the optimiser never returns worse than where it started
    return factor


def banded_factor(rounds: int, bands: int, *, iterations: int = 200) -> np.ndarray:
    """C: lower triangular, ``bands`` bands, unit columns, with a small ``||A C^-1||_F`` (see the module docstring).
    Deterministic (no randomness in the optimisation), so the server and a device compute the same C from
    (rounds, bands). ``bands = 1`` is the identity: independent noise each round, DP-SGD without amplification."""
    _check(rounds, bands)
    if bands == 1:
        return np.eye(rounds)
    return _banded_factor(rounds, bands, iterations).copy()


def band_mask(rounds: int, bands: int) -> np.ndarray:
    """1 where a lower-triangular ``bands``-banded matrix may be non-zero."""
    offsets = np.subtract.outer(np.arange(rounds), np.arange(rounds))
    return ((offsets >= 0) & (offsets < bands)).astype(np.float64)


def factorization_error(factor: np.ndarray) -> float:
    """The root-mean-square error per round of the prefix sums, in units of the noise on one contribution:
    ``sqrt(||A C^-1||_F^2 / R) * max_j ||C[:, j]||`` (for C = I that is the error of independent noise, ``sqrt((R+1)/2)``)."""
    rounds = factor.shape[0]
    decoder = np.linalg.solve(factor.T, prefix_sum_workload(rounds).T).T  # B = A C^-1
    return math.sqrt(np.square(decoder).sum() / rounds) * float(np.linalg.norm(factor, axis=0).max())


def error_against_independent(rounds: int, bands: int) -> float:
    """The prefix sums' RMS error with the banded factor, against independent noise each round (``C = I``) at the same
    separation and so the same sensitivity: below 1 is what the factorisation buys."""
    return factorization_error(banded_factor(rounds, bands)) / factorization_error(np.eye(rounds))


def banded_sensitivity(factor: np.ndarray, *, bands: int, max_participations: int) -> float:
    """How far ``C X`` moves, per unit of one contribution's bound, when a device joins at most
    ``max_participations`` rounds at least ``bands`` apart: ``sqrt`` of the sum of its ``k`` largest squared column
    norms (those columns' supports are disjoint).

    Raises:
        ValueError: if ``factor`` has a non-zero entry outside ``bands`` bands (then the columns overlap and this bound
            does not hold).
    """
    rounds = factor.shape[0]
    if np.any(factor * (1.0 - band_mask(rounds, bands)) != 0.0):
        raise ValueError(f"the factor is not lower triangular with {bands} bands: the separation bound does not hold.")
    squared = np.sort(np.square(factor).sum(axis=0))[::-1]
    return math.sqrt(float(squared[:max_participations].sum()))


class CorrelatedNoise:
    """The rows of ``C^-1 Z``, one a round, for Z drawn row by row by the caller: ``w_t = (z_t - sum_{j=1}^{b-1}
    C[t, t-j] w_{t-j}) / C[t, t]``. Keeps only the last ``bands - 1`` rows, in memory (never stored: a row known to an
    adversary removes that much of the noise)."""

    def __init__(self, factor: np.ndarray, bands: int) -> None:
        self.factor, self.bands = factor, bands
        self.round = 0
        self.recent: deque[np.ndarray] = deque(maxlen=max(bands - 1, 1))

    def next(self, fresh: np.ndarray) -> np.ndarray:
        """The next row of ``C^-1 Z`` given Z's next row ``fresh``.

        Raises:
            RuntimeError: past the factor's last round.
        """
        t = self.round
        if t >= self.factor.shape[0]:
            raise RuntimeError(f"the factor covers {self.factor.shape[0]} rounds; round {t + 1} has no noise planned.")
        row = np.array(fresh, dtype=np.float64)
        for j, earlier in enumerate(reversed(self.recent), start=1):
            if j >= self.bands:
                break
            row -= self.factor[t, t - j] * earlier
        row /= self.factor[t, t]
        if self.bands > 1:
            self.recent.append(row)
        self.round += 1
        return row


def _check(rounds: int, bands: int) -> None:
    if rounds < 1 or not 1 <= bands <= rounds:
        raise ValueError(f"bands must be in [1, rounds = {rounds}]; found {bands}.")
