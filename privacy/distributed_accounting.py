"""Accounting for the distributed discrete Gaussian: integer noise added on the devices, only the sum revealed.

What. Each of at least ``survivors`` devices adds independent discrete Gaussian noise N_Z(0, sigma_sq) to every
coordinate of its integer vector (dimension ``dimension``), and secure aggregation reveals only the sum. This module
gives that sum's Rényi DP, its amplification by Poisson sampling of the participants, and the resulting (eps, delta)
after a number of releases, plus the smallest per-device variance that meets a budget.

Why. The ledger in ``privacy/accounting.py`` covers a continuous Gaussian added by the server. With secure
aggregation no party adds the noise centrally and the values are integers modulo a field size, so the noise must be
discrete and added in shares; a sum of discrete Gaussians is not a discrete Gaussian, so Opacus' formulas do not apply.

The bounds.
* Kairouz, Liu & Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
  Aggregation" (ICML), Theorem 1 / Proposition 14: with a = Delta2 / (sqrt(n) sigma), b = Delta1 / (sqrt(n) sigma)
  and tau = 10 * sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k+1)), for sigma >= 1/2 the sum satisfies
  D_alpha <= min(alpha a^2 / 2 + tau d, alpha/2 (a + tau sqrt(d))^2, alpha/2 (a^2 + 2 b tau + tau^2 d)) for all
  alpha >= 1. Since tau d <= alpha tau d for alpha >= 1, this is (1/2) eps^2-concentrated DP with
  eps = min{sqrt(a^2 + 2 tau d), a + tau sqrt(d), sqrt(a^2 + 2 b tau + tau^2 d)} (the last only when Delta1 is
  given), i.e. RDP alpha eps^2 / 2 at every order. The constants follow the authors' own accounting code
  (google-research/federated, distributed_dp/accounting_utils.py); the form with 2 tau d is the conservative one
  (some statements of Theorem 1 quote a smaller multiple of tau d, which this module does not rely on).
* Zhu & Wang 2019, "Poisson Subsampled Rényi Differential Privacy" (ICML), the general upper bound for any mechanism
  with RDP curve eps(.) under Poisson sampling with rate q, at integer alpha >= 2:
  (alpha-1) eps'(alpha) <= log[(1-q)^(alpha-1) (alpha q - q + 1) + C(alpha,2) q^2 (1-q)^(alpha-2) e^{eps(2)}
  + 3 sum_{l=3}^{alpha} C(alpha,l) (1-q)^(alpha-l) q^l e^{(l-1) eps(l)}], evaluated here in log space. Subsampling
  never hurts (the subsampled output is a mixture, and Rényi divergence is jointly quasi-convex), so the result is
  also capped by eps(alpha).

More survivors. The bound is stated for exactly n summed noise shares. If more devices survive, the released sum is the
n-share sum plus further independent noise (the extra shares), i.e. a post-processing of the n-share release that does
not depend on the data in question, so the guarantee at n = the minimum number of survivors holds for any larger
number. The same argument allows any m <= n of the shares to carry the guarantee, so the epsilon used is the
smallest over m = 1..n (with m = 1, tau = 0: the single discrete Gaussian of Canonne, Kamath & Steinke 2020). Fewer
survivors than ``survivors`` voids the guarantee: secure aggregation must abort below that threshold.

Trust assumption. Every surviving device counted in ``survivors`` adds its full, honestly sampled noise share, drawn
independently of everyone else's and never revealed. A device that skips or leaks its share must not be counted.
Sensitivities are those of one device's integer contribution after scaling, rounding and clipping.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import gammaln, logsumexp

MIN_SIGMA_SQ = 0.25
"""The smallest per-device variance the DDG bound covers (sigma >= 1/2)."""

MAX_NOISE_MULTIPLIER = 1e6
"""The calibration gives up once the total noise std exceeds this many L2 sensitivities (as in the ledger)."""


def _validate_ddg(sensitivity_l2: float, sigma_sq: float, survivors: int, dimension: int,
                  sensitivity_l1: float | None) -> None:
    if not (math.isfinite(sensitivity_l2) and sensitivity_l2 > 0.0):
        raise ValueError(f"sensitivity_l2 must be finite and > 0; found {sensitivity_l2}.")
    if not (math.isfinite(sigma_sq) and sigma_sq >= MIN_SIGMA_SQ):
        raise ValueError(f"sigma_sq must be finite and >= {MIN_SIGMA_SQ} (the bound needs sigma >= 1/2); "
                         f"found {sigma_sq}.")
    if isinstance(survivors, bool) or int(survivors) != survivors or survivors < 1:
        raise ValueError(f"survivors must be an integer >= 1; found {survivors}.")
    if isinstance(dimension, bool) or int(dimension) != dimension or dimension < 1:
        raise ValueError(f"dimension must be an integer >= 1; found {dimension}.")
    if sensitivity_l1 is not None and not (math.isfinite(sensitivity_l1) and sensitivity_l1 >= sensitivity_l2):
        raise ValueError(f"sensitivity_l1 must be finite and >= sensitivity_l2={sensitivity_l2} "
                         f"(an L1 norm is never below the L2 norm); found {sensitivity_l1}.")


def ddg_cdp_epsilon(*, sensitivity_l2: float, sigma_sq: float, survivors: int, dimension: int,
                    sensitivity_l1: float | None = None) -> float:
    """eps such that the sum of ``survivors`` devices' noisy vectors is (1/2) eps^2-concentrated DP.

    ``sigma_sq`` is the per-device variance parameter; the sum's noise has variance about survivors * sigma_sq.
    The theorem's eps is taken at every m = 1..survivors and the smallest kept: the sum of ``survivors`` shares is the
    sum of m shares plus independent noise (post-processing), and tau grows with m, so for small sigma fewer shares
    can give the better bound. Hence the result never increases with ``survivors``.

    Raises:
        ValueError: naming the first argument outside its allowed range.
    """
    _validate_ddg(sensitivity_l2, sigma_sq, survivors, dimension, sensitivity_l1)
    m = np.arange(1, int(survivors) + 1, dtype=float)
    k = m[:-1]
    tau = 10.0 * np.concatenate(([0.0], np.cumsum(np.exp(-2.0 * math.pi ** 2 * sigma_sq * k / (k + 1.0)))))
    a = sensitivity_l2 / np.sqrt(m * sigma_sq)
    eps = np.minimum(np.sqrt(a * a + 2.0 * tau * dimension), a + tau * math.sqrt(dimension))
    if sensitivity_l1 is not None:
        b = sensitivity_l1 / np.sqrt(m * sigma_sq)
        eps = np.minimum(eps, np.sqrt(a * a + 2.0 * b * tau + tau * tau * dimension))
    return float(np.min(eps))


def ddg_rdp(alpha: float, *, sensitivity_l2: float, sigma_sq: float, survivors: int, dimension: int,
            sensitivity_l1: float | None = None) -> float:
    """The RDP of one (unsampled) release at order ``alpha`` >= 1: alpha * eps^2 / 2."""
    if not alpha >= 1.0:
        raise ValueError(f"alpha must be >= 1; found {alpha}.")
    eps = ddg_cdp_epsilon(sensitivity_l2=sensitivity_l2, sigma_sq=sigma_sq, survivors=survivors,
                          dimension=dimension, sensitivity_l1=sensitivity_l1)
    return alpha * eps * eps / 2.0


def subsampled_rdp(base: Callable[[int], float], sample_rate: float, orders: Sequence[int]) -> np.ndarray:
    """Zhu & Wang's general upper bound on the RDP of ``base`` under Poisson sampling, at integer ``orders`` >= 2.

    ``base(l)`` is the unsampled mechanism's RDP at integer order l (called for l = 2..max(orders)). At
    ``sample_rate`` = 1 the base curve is returned; otherwise the bound, capped by the base curve.
    """
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1]; found {sample_rate}.")
    if len(orders) == 0 or any(isinstance(o, bool) or int(o) != o or o < 2 for o in orders):
        raise ValueError(f"orders must be a non-empty sequence of integers >= 2; found {list(orders)}.")
    ints = [int(o) for o in orders]
    top = max(ints)
    eps = np.full(top + 1, np.nan)  # eps[l] = base(l), l = 2..top
    eps[2:] = [float(base(l)) for l in range(2, top + 1)]
    if np.any(np.isnan(eps[2:])) or np.any(eps[2:] < 0.0):
        raise ValueError("base must return RDP values >= 0 at every integer order from 2 to max(orders).")
    base_curve = eps[ints]
    if sample_rate == 1.0:
        return base_curve
    q = sample_rate
    log_q, log_1mq = math.log(q), math.log1p(-q)
    out = np.empty(len(ints))
    for i, alpha in enumerate(ints):
        ls = np.arange(2, alpha + 1)
        log_binom = gammaln(alpha + 1) - gammaln(ls + 1) - gammaln(alpha - ls + 1)
        log_terms = log_binom + (alpha - ls) * log_1mq + ls * log_q + (ls - 1) * eps[ls]
        log_terms[1:] += math.log(3.0)  # the factor 3 on the l >= 3 terms; l = 2 enters with factor 1
        first = (alpha - 1) * log_1mq + math.log(alpha * q - q + 1.0)
        bound = logsumexp(np.concatenate(([first], log_terms))) / (alpha - 1)
        out[i] = min(bound, base_curve[i])
    return out


def rdp_to_epsilon(orders: Sequence[float], rdp: np.ndarray, delta: float) -> float:
    """Opacus' ``get_privacy_spent``, without its warning that the best order sits at an end of the range: the integer
    orders here are what the subsampling bound allows, and any order gives a valid (if looser) epsilon."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the (smallest|largest) alpha")
        eps, _ = get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def ddg_orders() -> list[int]:
    """The integer RDP orders this module evaluates (the subsampling bound needs integers)."""
    return list(range(2, 257)) + [320, 384, 512, 768, 1024]


def _validate_release(sample_rate: float, steps: int, delta: float) -> None:
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"sample_rate must be in (0, 1]; found {sample_rate}.")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1; found {steps}.")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1); found {delta}.")


def ddg_release_rdp(*, sensitivity_l2: float, sigma_sq: float, survivors: int, dimension: int, sample_rate: float,
                    orders: Sequence[float], sensitivity_l1: float | None = None) -> np.ndarray:
    """The RDP at ``orders`` of one release sampled at ``sample_rate``. A non-integer order alpha takes the value of
    ceil(alpha): the subsampling bound needs integers and RDP never decreases with the order, so this bounds it, and
    Opacus' grid of orders (a device's ledger) can hold it beside Gaussian releases."""
    eps_sq = ddg_cdp_epsilon(sensitivity_l2=sensitivity_l2, sigma_sq=sigma_sq, survivors=survivors,
                             dimension=dimension, sensitivity_l1=sensitivity_l1) ** 2
    ceilings = [max(2, math.ceil(a)) for a in orders]
    integers = sorted(set(ceilings))
    curve = dict(zip(integers, subsampled_rdp(lambda alpha: alpha * eps_sq / 2.0, sample_rate, integers)))
    return np.array([curve[c] for c in ceilings])


def ddg_epsilon(*, sensitivity_l2: float, sigma_sq: float, survivors: int, dimension: int, sample_rate: float,
                steps: int, delta: float, sensitivity_l1: float | None = None) -> float:
    """Epsilon at ``delta`` after ``steps`` releases, each sampling every participant with ``sample_rate``.

    RDP composes linearly over the releases; the conversion is Opacus' ``get_privacy_spent`` on ``ddg_orders()``.
    """
    _validate_ddg(sensitivity_l2, sigma_sq, survivors, dimension, sensitivity_l1)
    _validate_release(sample_rate, steps, delta)
    orders = ddg_orders()
    rdp = steps * ddg_release_rdp(sensitivity_l2=sensitivity_l2, sigma_sq=sigma_sq, survivors=survivors,
                                  dimension=dimension, sample_rate=sample_rate, orders=orders,
                                  sensitivity_l1=sensitivity_l1)
    return rdp_to_epsilon(orders, rdp, delta)


def calibrate_ddg_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                        sensitivity_l2: float, survivors: int, dimension: int,
                        sensitivity_l1: float | None = None) -> float:
    """The smallest per-device ``sigma_sq`` (to 1 % of the budget) whose ``steps`` releases stay within the budget.

    Returned is the variance parameter each device's discrete Gaussian uses, not the total. Double an upper bound
    until it fits, then bisect until epsilon is within 1 % below ``target_epsilon``. If the smallest variance the
    bound covers (``MIN_SIGMA_SQ``) already fits, that is returned.

    Raises:
        ValueError: if an input is out of range, or no variance up to (1e6 * sensitivity_l2)^2 / survivors fits.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0.0):
        raise ValueError(f"target_epsilon must be finite and > 0; found {target_epsilon}.")
    _validate_ddg(sensitivity_l2, MIN_SIGMA_SQ, survivors, dimension, sensitivity_l1)
    _validate_release(sample_rate, steps, delta)

    def epsilon(sigma_sq: float) -> float:
        return ddg_epsilon(sensitivity_l2=sensitivity_l2, sigma_sq=sigma_sq, survivors=survivors,
                           dimension=dimension, sample_rate=sample_rate, steps=steps, delta=delta,
                           sensitivity_l1=sensitivity_l1)

    low, high = MIN_SIGMA_SQ, MIN_SIGMA_SQ
    eps_high = epsilon(high)
    if eps_high <= target_epsilon:
        return high
    ceiling = (MAX_NOISE_MULTIPLIER * sensitivity_l2) ** 2 / survivors
    while eps_high > target_epsilon:
        low, high = high, 2.0 * high
        if high > ceiling:
            raise ValueError(f"target_epsilon={target_epsilon} cannot be reached at delta={delta} with any "
                             f"per-device sigma_sq up to {ceiling:g}.")
        eps_high = epsilon(high)
    while target_epsilon - eps_high > 0.01 * target_epsilon:
        middle = (low + high) / 2.0
        eps = epsilon(middle)
        if eps <= target_epsilon:
            high, eps_high = middle, eps
        else:
            low = middle
    return high
