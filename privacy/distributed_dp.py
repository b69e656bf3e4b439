"""Distributed DP under secure aggregation: each device noises its own contribution; the server sees only the sum.

The distributed discrete Gaussian mechanism (Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian
Mechanism for Federated Learning with Secure Aggregation"). A device that takes part in a round:

1. bounds its contribution (``privacy.contribution``: update clipped to C and the bounded statistics, norm <= S);
2. rotates it with the round's public randomised Hadamard transform (``rotate``: random signs from a public seed, then
   the orthonormal Walsh-Hadamard transform), which spreads its norm evenly over the coordinates so the modulus can be
   small;
3. scales it by gamma and rounds each coordinate to an integer, stochastically and conditionally: it redraws the
   rounding until the rounded vector's norm is within ``DistributedDiscreteGaussian.norm_bound`` (the paper's
   conditional randomised rounding, with beta = exp(-1/2)), so one device's integer vector has L2 norm <= Delta2;
4. adds its share of discrete Gaussian noise, N_Z(0, sigma_dev^2) per coordinate (``privacy.discrete_gaussian``,
   an exact sampler on OS entropy), sized so that the shares of ``min_survivors`` devices add up to the noise the
   accountant needs;
5. reduces the result mod m = 2**bits and hands the integers to SecAgg+, which sums them mod m.

The server unmasks the noisy sum mod m, centres it, divides by gamma and rotates back (``decode``). It never sees an
un-noised sum or any one device's vector. The modulus, gamma and the bits are chosen (``plan_distributed``) so that
the sum of at most ``max_contributors`` devices wraps around the modulus with probability below ``wrap_probability``
a round: the rotated signal's coordinates are sub-Gaussian with variance proxy ||sum||^2 / d (Hoeffding over the
random signs), the noise's with the contributors' total variance, the two are independent, and each rounding moves
a coordinate by less than 1.

Accounting (``privacy.distributed_accounting``) uses Delta2, sigma_dev^2 and ``min_survivors``: a round with more
surviving devices only adds independent noise (post-processing), and a round with fewer releases nothing.
Framework-free: numpy in, numpy out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from privacy.discrete_gaussian import sample_discrete_gaussian

ROUNDING_BETA = math.exp(-0.5)
"""The conditional rounding's beta: each rounding attempt passes the norm check with probability >= 1 - beta."""
MAX_DEVICE_VARIANCE = 2**24
"""The largest per-device variance the exact sampler takes (``privacy.discrete_gaussian``)."""
MAX_BITS = 31
"""Flower's SecAgg+ casts each quantised value to int32: the modulus m = 2**bits must stay <= 2**31."""
SECAGG_MODULUS_BITS = 32
"""SecAgg+'s own modulus is 2**32: the sum of n values below m must stay below it (n·m <= 2**32)."""


def padded_dimension(dimension: int) -> int:
    """The power of two the Hadamard transform works on (>= ``dimension``)."""
    if dimension < 1:
        raise ValueError(f"dimension must be >= 1; found {dimension}.")
    return 1 << (dimension - 1).bit_length()


def _hadamard(x: np.ndarray) -> np.ndarray:
    """The orthonormal Walsh-Hadamard transform of ``x`` (length a power of two), in O(d log d); its own inverse."""
    d = x.size
    y = np.asarray(x, dtype=np.float64).copy()
    h = 1
    while h < d:
        y = y.reshape(-1, 2, h)
        y = np.stack([y[:, 0] + y[:, 1], y[:, 0] - y[:, 1]], axis=1).reshape(d)
        h *= 2
    return y / math.sqrt(d)


def rotation_signs(seed: int, padded: int) -> np.ndarray:
    """The round's public random signs (+-1) of the randomised Hadamard transform, from its public ``seed``."""
    return np.where(np.random.default_rng(seed).random(padded) < 0.5, -1.0, 1.0)


def rotate(x: np.ndarray, seed: int, padded: int) -> np.ndarray:
    """H·D·x: ``x`` zero-padded to ``padded`` coordinates, signs flipped by ``rotation_signs``, Hadamard-transformed."""
    v = np.zeros(padded, dtype=np.float64)
    v[: x.size] = x
    return _hadamard(v * rotation_signs(seed, padded))


def unrotate(y: np.ndarray, seed: int, dimension: int) -> np.ndarray:
    """D·H·y cut to ``dimension`` coordinates: the inverse of ``rotate``."""
    return (_hadamard(np.asarray(y, dtype=np.float64)) * rotation_signs(seed, y.size))[:dimension]


def _uniforms(count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) with 53 random bits each, from the OS."""
    return (np.frombuffer(os.urandom(8 * count), dtype=np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True)
class DistributedDiscreteGaussian:
    """One run's public parameters of the mechanism, the same on every device and on the server.

    Attributes:
        dimension: d, the coordinates of one contribution (update and statistics).
        sensitivity: S, the largest L2 norm of one contribution before scaling.
        scale: gamma, integer units per unit of the contribution.
        bits: the modulus is m = 2**bits.
        device_variance: sigma_dev^2, each device's discrete Gaussian variance per coordinate (an integer).
        min_survivors: t, the fewest devices whose noise a released sum may hold.
        max_contributors: the most devices a round may sum (the modulus is sized for them).
    """

    dimension: int
    sensitivity: float
    scale: float
    bits: int
    device_variance: int
    min_survivors: int
    max_contributors: int

    def __post_init__(self) -> None:
        """Refuse parameters no honest plan has (a server's instructions are not trusted): each names its rule."""
        checks = [("dimension", self.dimension >= 1, ">= 1"), ("sensitivity", self.sensitivity > 0.0, "> 0"),
                  ("scale", self.scale > 0.0, "> 0"), ("bits", 1 <= self.bits <= MAX_BITS, f"in [1, {MAX_BITS}]"),
                  ("device_variance", 1 <= self.device_variance <= MAX_DEVICE_VARIANCE,
                   f"in [1, {MAX_DEVICE_VARIANCE}]"),
                  ("min_survivors", 2 <= self.min_survivors <= self.max_contributors, "in [2, max_contributors]")]
        for name, holds, rule in checks:
            if not (holds and math.isfinite(float(getattr(self, name)))):
                raise ValueError(f"{name} must be {rule}; found {getattr(self, name)}.")

    @property
    def padded(self) -> int:
        return padded_dimension(self.dimension)

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def norm_bound(self) -> float:
        """Delta2: the largest norm of one device's rounded integer vector (conditional rounding's bound)."""
        return rounded_norm_bound(self.scale * self.sensitivity, self.padded)

    @property
    def noise_multiplier(self) -> float:
        """The survivors' noise std over Delta2: the z of a continuous Gaussian with the same noise-to-sensitivity."""
        return math.sqrt(self.min_survivors * self.device_variance) / self.norm_bound

    def wrap_probability(self) -> float:
        """An upper bound on the chance that a round's sum of ``max_contributors`` vectors wraps the modulus."""
        return wrap_probability(scale=self.scale, sensitivity=self.sensitivity, padded=self.padded,
                                device_variance=self.device_variance, contributors=self.max_contributors,
                                modulus=self.modulus)


def rounded_norm_bound(norm: float, padded: int) -> float:
    """Kairouz et al.'s bound on the norm of a conditionally rounded vector of norm <= ``norm`` in ``padded``
    coordinates: sqrt(norm^2 + d/4 + sqrt(2 ln(1/beta)) (norm + sqrt(d)/2))."""
    slack = math.sqrt(2.0 * math.log(1.0 / ROUNDING_BETA))
    return math.sqrt(norm**2 + padded / 4.0 + slack * (norm + math.sqrt(padded) / 2.0))


def wrap_probability(*, scale: float, sensitivity: float, padded: int, device_variance: int, contributors: int,
                     modulus: int) -> float:
    """Union bound over the coordinates that |signal + rounding + noise| of a sum of ``contributors`` reaches m/2.

    The room is m/2 - contributors (the rounding moves each device's coordinate by < 1). A coordinate of the rotated
    signal is sub-Gaussian with variance proxy (contributors·gamma·S)^2 / d (Hoeffding over the random signs), the
    noise's with contributors·sigma_dev^2 (a discrete Gaussian is sub-Gaussian with its sigma^2; Canonne, Kamath &
    Steinke 2020), and they are independent, so their sum's proxy is the sum: a tail of 2·exp(-room^2 / (2 v)) per
    coordinate, times d coordinates."""
    room = modulus / 2.0 - contributors
    if room <= 0.0:
        return 1.0
    proxy = (contributors * scale * sensitivity) ** 2 / padded + contributors * device_variance
    return min(1.0, padded * 2.0 * math.exp(-room * room / (2.0 * proxy)))


def plan_distributed(*, dimension: int, sensitivity: float, noise_multiplier: float, min_survivors: int,
                     max_contributors: int, wrap_bound: float = 1e-6) -> DistributedDiscreteGaussian:
    """The run's parameters: the largest scale gamma (least rounding error) whose sums of ``max_contributors``
    devices wrap the modulus with probability <= ``wrap_bound``, with each device's variance sized so that
    ``min_survivors`` shares make a noise of std ``noise_multiplier`` × Delta2 (rounded up to an integer).

    Raises:
        ValueError: naming the input no such plan fits (too many contributors for SecAgg's 32 bits, or no scale
            that keeps both the wrap bound and the sampler's largest variance).
    """
    if not sensitivity > 0.0 or not noise_multiplier > 0.0:
        raise ValueError(f"sensitivity and noise_multiplier must be > 0; found {sensitivity}, {noise_multiplier}.")
    if not 2 <= min_survivors <= max_contributors:
        raise ValueError(f"min_survivors must be in [2, max_contributors={max_contributors}]; found {min_survivors}.")
    bits = min(MAX_BITS, SECAGG_MODULUS_BITS - math.ceil(math.log2(max_contributors + 1)))
    padded = padded_dimension(dimension)

    def candidate(scale: float) -> DistributedDiscreteGaussian | None:
        """The plan at ``scale``, or None when its shares' variance is past what the sampler takes."""
        delta2 = rounded_norm_bound(scale * sensitivity, padded)
        variance = max(1, math.ceil((noise_multiplier * delta2) ** 2 / min_survivors))
        if variance > MAX_DEVICE_VARIANCE:
            return None
        return DistributedDiscreteGaussian(dimension, sensitivity, scale, bits, variance, min_survivors,
                                           max_contributors)

    def fits(plan: DistributedDiscreteGaussian | None) -> bool:
        return plan is not None and plan.wrap_probability() <= wrap_bound

    low, high = 0.0, 1.0 / sensitivity
    if not fits(candidate(high)):
        raise ValueError(
            f"no modulus fits: {max_contributors} contributors leave {bits} bits of SecAgg's 32, too few for noise "
            f"multiplier {noise_multiplier} and {min_survivors} minimum survivors at wrap probability {wrap_bound:g}; "
            "lower the contributors per round (the sampling rate) or raise the minimum survivors."
        )
    while fits(candidate(high * 2.0)):
        low, high = high, high * 2.0
    low, high = high, high * 2.0
    for _ in range(40):
        middle = (low + high) / 2.0
        low, high = (middle, high) if fits(candidate(middle)) else (low, middle)
    return candidate(low)  # type: ignore[return-value]


def encode(contribution: np.ndarray, plan: DistributedDiscreteGaussian, rotation_seed: int) -> np.ndarray:
    """A device's share of the round: its bounded contribution (length d, norm <= S) rotated, scaled, rounded within
    Delta2, noised with N_Z(0, sigma_dev^2) per coordinate from OS entropy, reduced mod m (int64 in [0, m)).

    Raises:
        ValueError: if the contribution has the wrong length or a norm above S (the device must clip first).
    """
    x = np.asarray(contribution, dtype=np.float64)
    if x.shape != (plan.dimension,):
        raise ValueError(f"the contribution must have {plan.dimension} coordinates; found shape {x.shape}.")
    norm = float(np.linalg.norm(x))
    if not norm <= plan.sensitivity * (1.0 + 1e-9):
        raise ValueError(f"the contribution's norm {norm} exceeds its bound S={plan.sensitivity}: clip it first.")
    scaled = rotate(x, rotation_seed, plan.padded) * plan.scale
    floor = np.floor(scaled)
    for _ in range(100):  # each attempt passes with probability >= 1 - beta = 0.39
        rounded = floor + (_uniforms(scaled.size) < scaled - floor)
        if float(np.linalg.norm(rounded)) <= plan.norm_bound:
            break
    else:
        raise RuntimeError("conditional rounding failed 100 times in a row (probability < 1e-20): a bug, not chance.")
    noisy = rounded.astype(np.int64) + sample_discrete_gaussian(plan.device_variance, plan.padded)
    return np.mod(noisy, plan.modulus)


def decode(total: np.ndarray, plan: DistributedDiscreteGaussian, rotation_seed: int) -> np.ndarray:
    """The server's estimate of the sum of the contributions (length d) from the unmasked sum mod m of the devices'
    shares: centred into [-m/2, m/2), divided by gamma, rotated back. It carries every survivor's noise share."""
    m = plan.modulus
    centred = np.mod(np.asarray(total, dtype=np.int64), m)
    centred = np.where(centred >= m // 2, centred - m, centred).astype(np.float64)
    return unrotate(centred / plan.scale, rotation_seed, plan.dimension)
