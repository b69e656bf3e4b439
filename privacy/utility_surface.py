"""What utility a privacy plan buys, read off the measured privacy-utility surface (``privacy/measured_surface.json``).

``benchmarks/privacy_utility.py --surface`` trains the default model at populations 1,000 to 1,000,000 and
ε 0.5 to 8 and scores each DP model on the same held-out points. Utility depends on the plan mostly through the noise
on each round's mean update, σ/C = z·S/(K·C) (the surface's points at different populations line up on it): the
predictor makes top-1 non-increasing in σ/C (pool-adjacent violators: more noise never helps, measured dips
are sampling noise), and interpolates it and its 95 % interval in log σ/C. It predicts nothing beyond the noisiest
measured point, and says when a plan differs from how the surface was trained (rounds, fewer clients a round:
less averaging of the clients' updates, so the prediction is optimistic).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

SURFACE = Path(__file__).resolve().parent / "measured_surface.json"


@dataclass(frozen=True)
class PredictedUtility:
    """Held-out top-1 the surface predicts for a plan, its interval, the references beside it (the non-private
    federated model trained as the nearest measured points were), and its caveats."""

    top1: float
    low: float
    high: float
    nonprivate: float
    rule: float
    caveats: tuple[str, ...] = ()

    def text(self) -> str:
        notes = "".join(f"; {c}" for c in self.caveats)
        return (f"top-1 ≈ {self.top1:.3f} [{self.low:.3f}, {self.high:.3f}] predicted from the measured surface "
                f"(non-private federated {self.nonprivate:.3f}, named-else-recent rule {self.rule:.3f}){notes}")


def load_surface(path: Path = SURFACE) -> dict | None:
    """The measured surface, or None where it was never measured (or not shipped)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _non_increasing(values: list[float]) -> list[float]:
    """The closest non-increasing sequence in least squares (pool-adjacent violators, equal weights)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]


def _bracket(x: float, xs: list[float]) -> int:
    """The i with xs[i] <= x <= xs[i + 1]; -1 below xs[0], len(xs) - 1 above xs[-1]."""
    for i, (x0, x1) in enumerate(zip(xs, xs[1:])):
        if x0 <= x <= x1:
            return i
    return -1 if x < xs[0] else len(xs) - 1


def _interpolate(x: float, xs: list[float], ys: list[float]) -> float:
    i = _bracket(x, xs)
    if i < 0 or i == len(xs) - 1:
        return ys[0] if i < 0 else ys[-1]
    return ys[i] if xs[i + 1] == xs[i] else ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])


def _neighbours(rows: list[dict], x: float, xs: list[float]) -> list[dict]:
    """The measured points a prediction at log σ/C = ``x`` interpolates between (one at either end)."""
    i = _bracket(x, xs)
    return [rows[0]] if i < 0 else rows[i : i + 2]


def predict_top1(surface: dict, noise_to_signal: float, *, rounds: int, clients_per_round: float
                 ) -> PredictedUtility | str:
    """The predicted held-out top-1 at σ/C = ``noise_to_signal``, or why there is none."""
    rows = sorted(surface["surface"], key=lambda r: r["noise_to_signal"])
    if not rows:
        return "the measured surface holds no point"
    if noise_to_signal > rows[-1]["noise_to_signal"]:
        return (f"beyond the measured surface: σ/C = {noise_to_signal:.3g} is noisier than its noisiest point "
                f"({rows[-1]['noise_to_signal']:.3g}); measure it (benchmarks/privacy_utility.py --stand-for N)")
    xs = [math.log(r["noise_to_signal"]) for r in rows]
    top = _non_increasing([r["top1"] for r in rows])
    below = [r["top1"] - r["top1_ci"][0] for r in rows]
    above = [r["top1_ci"][1] - r["top1"] for r in rows]
    x = math.log(max(noise_to_signal, rows[0]["noise_to_signal"]))
    value = _interpolate(x, xs, top)
    caveats = []
    if noise_to_signal < rows[0]["noise_to_signal"]:
        caveats.append("less noise than any measured point: at least this")
    if rounds != surface["rounds"]:
        caveats.append(f"the surface trained {surface['rounds']} rounds, this plan {rounds}")
    near = _neighbours(rows, x, xs)
    cohort = min(r["simulated_users"] * surface["simulated_sample_rate"] for r in near)
    if clients_per_round < cohort:
        caveats.append(f"the surface trained {cohort:,.0f} clients a round there, this plan {clients_per_round:,.0f}: "
                       "optimistic")
    return PredictedUtility(top1=value, low=value - _interpolate(x, xs, below), high=value + _interpolate(x, xs, above),
                            nonprivate=sum(r["nonprivate_top1"] for r in near) / len(near),
                            rule=surface["rules"]["named_else_recent"], caveats=tuple(caveats))
