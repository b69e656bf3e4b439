"""Where the privacy-relevant randomness comes from: the operating system's CSPRNG, or (research only) a seed.

Every epsilon this project prints assumes nobody who attacks a release can predict its Gaussian noise. With
``privacy.noise: secure`` (the default) every draw the accountant counts comes from the OS (``os.urandom``, the
kernel's CSPRNG), taken afresh at each release and never derived from the config seed, never stored in a
checkpoint, a log or metrics. ``seeded`` draws from NumPy streams keyed by the run seed, exactly as this project
did before: reproducible, and therefore *no* guarantee against anyone who knows the seed (``SEEDED_WARNING``).

Floating-point safety (Mironov 2012, "On Significance of the Least Significant Bits for Differential Privacy";
Jin, McMurtry, Rubinstein & Ohrimenko 2022, "Are We There Yet? Timing and Floating-Point Attacks on Differential
Privacy Systems", which breaks Opacus' and others' floating-point Gaussian): a single floating-point normal sample
can only take values on a sparse, mean-dependent set of floats, so a release can reveal which input it came from.
``secure_gaussian`` uses the fix of Holohan & Braghin 2021 ("Secure Random Sampling in Differential Privacy",
ESORICS, Sec. 5.1) that Opacus' ``secure_mode`` also uses: each noise value is the sum of 2n = 4 independent
normals of std sigma, divided by 2 (so its std is sigma), which makes an attacker search 2^(53*(2n-1)) float
combinations instead of 2^53. The base normals are Box-Muller transforms of OS-random uniforms: u1 has 128 random
bits, so a base pair is cut off only beyond radius sqrt(2 ln 2^128) = 13.3 sigma (probability 2^-128 per pair;
over a whole run far below 1e-20, which would be added to delta). A discrete Gaussian on a fine grid (Canonne,
Kamath & Steinke 2020) avoids floats altogether, but an exact sampler in Python costs milliseconds per coordinate
and a release here has ~10^5 coordinates, and the released model is float32 anyway; we chose the 2n-sum.

On the device, DP-SGD runs inside Opacus' ``DPOptimizer`` with ``secure_mode=True`` (the same 2n-sum) and a torch
generator seeded with 64 bits of the device's own OS entropy (``device_generator``); the same generator draws
the Poisson batches. Opacus' ``PrivacyEngine(secure_mode=True)`` would take its bits from torchcsprng, which no
longer builds against current torch; torch's generator is a Mersenne Twister, so reproducing one device's draws
means guessing its 64-bit seed (2^64 candidates, each a whole local training run), fresh every round.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # torch only where a device trains with DP-SGD
    import torch

NOISE_SOURCES = ("secure", "seeded")
SEEDED_WARNING = "noise reproducible from the seed: not a privacy guarantee against anyone who knows it"
"""What every report of a run with ``privacy.noise: seeded`` says, word for word."""

_BASE_SAMPLES = 4
"""2n with n = 2, as in Holohan & Braghin 2021 and Opacus' ``secure_mode``: the sum of 4 draws of std sigma is /2."""


class GaussianNoise(Protocol):
    """A source of N(0, std^2) noise for the server's releases."""

    kind: str

    def sample(self, shape: Sequence[int], std: float) -> np.ndarray:
        """Independent N(0, std^2) values (float64) of the given shape."""


def _box_muller(count: int) -> np.ndarray:
    """``count`` standard normals from OS-random bits: Box-Muller with a 128-bit u1 in (0, 1] and a 64-bit angle."""
    pairs = (count + 1) // 2
    words = np.frombuffer(os.urandom(24 * pairs), dtype=np.uint64).reshape(pairs, 3)
    u1 = (words[:, 0].astype(np.float64) + (words[:, 1].astype(np.float64) + 1.0) * 2.0**-64) * 2.0**-64
    u1 = np.minimum(u1, 1.0)  # the float sum can round up past 1 when the high word is all ones
    angle = words[:, 2].astype(np.float64) * (2.0 * math.pi * 2.0**-64)
    radius = np.sqrt(-2.0 * np.log(u1))
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


def secure_gaussian(shape: Sequence[int], std: float) -> np.ndarray:
    """N(0, std^2) values from the OS's CSPRNG, each the sum of 4 draws halved (see the module docstring)."""
    if not std >= 0.0:
        raise ValueError(f"The noise standard deviation should be non-negative; found {std}.")
    count = int(np.prod(shape, dtype=np.int64))
    base = _box_muller(_BASE_SAMPLES * count).reshape(_BASE_SAMPLES, count)
    return (base.sum(axis=0) * (std / 2.0)).reshape(tuple(shape))


class SecureNoise:
    """Server noise from the OS at every draw: no state, nothing to store, nothing a seed could regenerate."""

    kind = "secure"

    def sample(self, shape: Sequence[int], std: float) -> np.ndarray:
        return secure_gaussian(shape, std)


class SeededNoise:
    """Server noise from a NumPy stream keyed by the run seed: reproducible, so no privacy against whoever knows it.

    The draws are those this project made before ``privacy.noise`` existed (``Generator.normal`` per array), so a
    seeded run reproduces earlier figures.
    """

    kind = "seeded"

    def __init__(self, seed_words: Sequence[int]) -> None:
        self.rng = np.random.default_rng(list(seed_words))

    def sample(self, shape: Sequence[int], std: float) -> np.ndarray:
        if not std >= 0.0:
            raise ValueError(f"The noise standard deviation should be non-negative; found {std}.")
        return self.rng.normal(0.0, std, size=tuple(shape))


def check_noise_source(kind: str, key: str = "privacy.noise") -> None:
    if kind not in NOISE_SOURCES:
        raise ValueError(f"{key} must be one of {list(NOISE_SOURCES)}; found {kind!r}.")


def gaussian_noise(kind: str, seed_words: Sequence[int]) -> GaussianNoise:
    """The server's noise source for ``privacy.noise`` = ``kind``; ``seed_words`` are read only when seeded."""
    check_noise_source(kind)
    return SecureNoise() if kind == "secure" else SeededNoise(seed_words)


def sampling_generator(secure: bool, seed_words: Sequence[int]) -> np.random.Generator:
    """Who takes part in a round: a generator seeded from 128 bits of OS entropy, or from ``seed_words``.

    Amplification by subsampling assumes the attacker does not know who was sampled, so a deployment samples
    from OS entropy; a simulation keeps its synthetic users' sampling reproducible from the seed.
    """
    return np.random.default_rng(secrets.randbits(128) if secure else list(seed_words))


def device_generator(seed: int | None) -> torch.Generator:
    """A torch generator for DP-SGD's noise and Poisson batches: 64 bits of this device's OS entropy, or ``seed``
    (a synthetic user in a ``seeded`` simulation). Never seeded by anything a real device receives."""
    import torch

    return torch.Generator().manual_seed(secrets.randbits(64) if seed is None else seed)
