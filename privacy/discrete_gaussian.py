"""Exact samples of the discrete Gaussian N_Z(0, sigma^2) from the operating system's CSPRNG, with no floats.

Why: in distributed DP each device adds its own share of discrete noise to its integer-encoded update before secure
aggregation, and SecAgg adds those integers mod m, so the noise the accountant counts is a sum of integers. A
floating-point sampler leaks through the sparse set of floats it can output (Mironov 2012, "On Significance of the
Least Significant Bits for Differential Privacy"); this one takes every decision by comparing integers.

What: the algorithm of Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for Differential Privacy" (NeurIPS),
Algorithms 1-3. Bernoulli(exp(-gamma)) for gamma in [0, 1] by the alternating-series loop (Algorithm 1), and for
larger gamma by floor(gamma) Bernoulli(exp(-1)) draws before the fractional part (Algorithm 2). A discrete Laplace
candidate with scale t = floor(sigma) + 1: U uniform in {0..t-1} kept with Bernoulli(exp(-U/t)), V the number of
Bernoulli(exp(-1)) successes before the first failure, a sign bit B, (B=1, U=0, V=0) rejected, Y = (1-2B)(U + tV).
Y is kept with Bernoulli(exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2))) (Algorithm 3). With an integer variance s every
exponent is a ratio of integers, here (|Y| t - s)^2 / (2 s t^2), and every Bernoulli(num/den) compares a uniform
integer in [0, den), made from ``os.urandom`` words by rejection, with num.

Any rejection restarts the whole candidate, which is the nested loops of the paper flattened: nothing drawn before
it is kept. All pending candidates advance together as numpy arrays, one round of random words per step.

int64 bound: s <= 2**24 gives t <= 2**12 + 1. Candidates with |Y| > 64 t are rejected outright, so
|Y| t <= 64 t^2 < 2**31 and (|Y| t - s)^2 < 2**60, while 2 s t^2 < 2**50. Those candidates would be accepted with
probability below exp(-1984) (|Y| t - s > 63 t^2 and s < t^2), and the output is N_Z(0, s) conditioned on
|X| <= 64 t, whose distance (total variation) from N_Z(0, s) is the mass of |X| > 64 t: below exp(-2040).
"""

from __future__ import annotations

import math
import os

import numpy as np

MAX_VARIANCE = 2**24
_TAIL = 64
"""Laplace candidates with |Y| > _TAIL * t are rejected outright (see the int64 bound in the module docstring)."""
_OVERSAMPLE = 2.2
"""Candidates proposed per missing draw in a round: 0.63 survive the Laplace step and ~0.76 of those the Gaussian
one (0.55 at variance 1), so one round usually fills every draw (about 77% of them at variance 1)."""
_WORD_MAX = np.uint64(2**64 - 1)


def _uniform_below(den: np.ndarray) -> np.ndarray:
    """Uniform integers in [0, den) (uint64), each from one OS-random uint64 word; words >= the largest multiple of
    den not above 2**64 are redrawn, so every residue is equally likely."""
    den = den.astype(np.uint64)
    top = _WORD_MAX - (np.uint64(0) - den) % den  # largest accepted word: 2**64 - 1 - (2**64 mod den)
    out = np.empty(den.size, dtype=np.uint64)
    pending = np.arange(den.size)
    while pending.size:
        words = np.frombuffer(os.urandom(8 * pending.size), dtype=np.uint64)
        good = words <= top[pending]
        done = pending[good]
        out[done] = words[good] % den[done]
        pending = pending[~good]
    return out


def _bernoulli(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Bernoulli(num/den) per coordinate, exactly: a uniform integer in [0, den) below num."""
    return _uniform_below(den) < num.astype(np.uint64)


def _bernoulli_exp_fraction(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Bernoulli(exp(-num/den)) for 0 <= num <= den (Algorithm 1): the parity of the first K with A_K = 0,
    A_K ~ Bernoulli(num/(den K)). den K stays below 2**63 for den <= 2**50 until K = 2**13, which takes 2**13 - 1
    successes in a row, of probability below 1/(2**13 - 1)!."""
    accept = np.zeros(num.size, dtype=bool)
    going = np.arange(num.size)
    k = 1
    while going.size:
        success = _bernoulli(num[going], den[going] * k)
        accept[going[~success]] = k % 2 == 1
        going = going[success]
        k += 1
    return accept


def _bernoulli_exp_one(count: int) -> np.ndarray:
    """``count`` draws of Bernoulli(exp(-1))."""
    ones = np.ones(count, dtype=np.int64)
    return _bernoulli_exp_fraction(ones, ones)


def bernoulli_exp(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Bernoulli(exp(-num/den)) per coordinate for integers num >= 0, 0 < den <= 2**50 (Algorithm 2):
    floor(num/den) Bernoulli(exp(-1)) draws must all succeed, then one Bernoulli(exp(-(num mod den)/den))."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    whole, part = np.divmod(num, den)
    accept = np.ones(num.size, dtype=bool)
    going = np.flatnonzero(whole > 0)
    while going.size:
        success = _bernoulli_exp_one(going.size)
        accept[going[~success]] = False
        going = going[success]
        whole[going] -= 1
        going = going[whole[going] > 0]
    alive = np.flatnonzero(accept)
    accept[alive] = _bernoulli_exp_fraction(part[alive], den[alive])
    return accept


def _laplace_candidates(scale: int, count: int) -> np.ndarray:
    """The discrete Laplace draws (scale t) among ``count`` proposals; a proposal rejected on the way yields none,
    as do those with |Y| > _TAIL * t."""
    u = _uniform_below(np.full(count, scale, dtype=np.uint64)).astype(np.int64)
    u = u[_bernoulli_exp_fraction(u, np.full(count, scale, dtype=np.int64))]
    v = np.zeros(u.size, dtype=np.int64)
    counting = np.arange(u.size)
    while counting.size:  # stops counting past _TAIL: such candidates are rejected below anyway
        counting = counting[_bernoulli_exp_one(counting.size)]
        v[counting] += 1
        counting = counting[v[counting] <= _TAIL]
    negative = np.frombuffer(os.urandom(u.size), dtype=np.uint8) & 1 == 1
    keep = ~(negative & (u == 0) & (v == 0))
    magnitude = u + scale * v
    keep &= magnitude <= _TAIL * scale
    return np.where(negative, -magnitude, magnitude)[keep]


def _check_variance(variance: int) -> None:
    if isinstance(variance, bool) or not isinstance(variance, int | np.integer) or not 1 <= variance <= MAX_VARIANCE:
        raise ValueError(f"variance must be an integer in [1, 2**24]; found {variance!r}.")


def sample_discrete_gaussian(variance: int, size: int) -> np.ndarray:
    """``size`` independent int64 draws of N_Z(0, variance), exact up to the tail cut in the module docstring."""
    _check_variance(variance)
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"size must be a non-negative integer; found {size!r}.")
    s = int(variance)
    t = math.isqrt(s) + 1
    out = np.empty(int(size), dtype=np.int64)
    filled = 0
    while filled < out.size:
        need = out.size - filled
        y = _laplace_candidates(t, int(need * _OVERSAMPLE) + 16)
        exponent_num = (np.abs(y) * t - s) ** 2
        y = y[bernoulli_exp(exponent_num, np.full(y.size, 2 * s * t * t, dtype=np.int64))][:need]
        out[filled : filled + y.size] = y
        filled += y.size
    return out


def discrete_gaussian_pmf(variance: float, support: np.ndarray) -> np.ndarray:
    """P(X = x) for X ~ N_Z(0, variance) at each integer x of ``support``; the normalising sum runs over
    |x| <= 12 sigma + 10, beyond which the mass is below exp(-72)."""
    if not variance > 0:
        raise ValueError(f"variance must be positive; found {variance!r}.")
    reach = math.ceil(12 * math.sqrt(variance) + 10)
    grid = np.arange(-reach, reach + 1, dtype=np.float64)
    total = np.exp(-(grid**2) / (2 * variance)).sum()
    x = np.asarray(support, dtype=np.float64)
    return np.exp(-(x**2) / (2 * variance)) / total
