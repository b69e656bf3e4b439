"""The seed's table with confidence intervals, the cold-start curve, ``experiment.json`` and the plots.

Metrics per policy (SEED.md's reported results, defined on the simulation; see ``simulations.loop.judging``):

* ``first_satisfaction``: share of requests whose *first* generated piece satisfied the user (satisfaction >= the
  keep threshold);
* ``edits``: mean number of edits before a keep (redos plus style, tempo and instrument changes) per request;
* ``retention_7d``: share of users who opened the app on day 7 after signing up (day 0);
* ``mood_match``: mean mood match of first pieces (0-1).

Intervals are percentile bootstraps over *users* (requests of one user are not independent): users are resampled
with replacement and each ratio recomputed from the resampled users' sums. Differences to the baseline use the
same resamples for both policies (paired: the users are the same). Each cold-start point (the n-th request of
every user who made n requests: one value per user) gets a normal-approximation interval.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from simulations.loop.experiment_settings import RETENTION_DAY, ReportSettings  # noqa: E402
from simulations.loop.loop_records import LoopRecords  # noqa: E402

METRICS = ("first_satisfaction", "edits", "retention_7d", "mood_match")
LABELS = {"first_satisfaction": "first-generation satisfaction", "edits": "edits before a keep",
          "retention_7d": f"day-{RETENTION_DAY} retention", "mood_match": "mood match"}
CHUNK = 100


def _per_user_sums(records: LoopRecords) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(numerator, denominator) per user of every metric, so any set of users gives the ratio."""
    users = records.column("user").astype(np.int64)
    count = np.bincount(users, minlength=records.users).astype(np.float64)

    def total(name: str) -> np.ndarray:
        return np.bincount(users, weights=records.column(name).astype(np.float64), minlength=records.users)

    return {
        "first_satisfaction": (total("first_satisfied"), count),
        "edits": (total("edits"), count),
        "retention_7d": (records.visited[:, RETENTION_DAY].astype(np.float64), np.ones(records.users)),
        "mood_match": (total("mood_match"), count),
    }


def _ratio(num: np.ndarray, den: np.ndarray) -> float:
    return float(num.sum() / den.sum()) if den.sum() > 0 else math.nan


def _resampled_ratios(sums: tuple[np.ndarray, np.ndarray], draws: np.ndarray) -> np.ndarray:
    num, den = sums
    out = np.empty(len(draws))
    for start in range(0, len(draws), CHUNK):
        index = draws[start:start + CHUNK]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + CHUNK] = num[index].sum(axis=1) / den[index].sum(axis=1)
    return out


def _interval(samples: np.ndarray, confidence: float) -> list[float]:
    tail = 50.0 * (1.0 - confidence)
    finite = samples[np.isfinite(samples)]
    if len(finite) == 0:
        return [math.nan, math.nan]
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100.0 - tail))]


def policy_table(results: dict[str, LoopRecords], settings: ReportSettings, seed: int) -> dict[str, dict]:
    """Every metric with its interval, extra descriptive figures, and paired differences to the baseline."""
    users = next(iter(results.values())).users
    draws = np.random.default_rng([seed, 99]).integers(0, users, size=(settings.bootstrap, users))
    sums = {name: _per_user_sums(records) for name, records in results.items()}
    table: dict[str, dict] = {}
    for name, records in results.items():
        row: dict = {}
        for metric in METRICS:
            row[metric] = _ratio(*sums[name][metric])
            row[f"{metric}_ci"] = _interval(_resampled_ratios(sums[name][metric], draws), settings.confidence)
        honoured = records.column("typed_genre_honoured")
        row.update({
            "requests": len(records),
            "requests_per_user": len(records) / users,
            "first_satisfaction_score": float(records.column("first_satisfaction").mean()) if len(records) else math.nan,
            "first_genre_match": float(records.column("first_genre_match").mean()) if len(records) else math.nan,
            "redos": float(records.column("redos").mean()) if len(records) else math.nan,
            "typed_genre_requests": int((honoured >= 0).sum()),
            "typed_genre_honoured": float(honoured[honoured >= 0].mean()) if (honoured >= 0).any() else None,
        })
        if "baseline" in results and name != "baseline":
            row["vs_baseline"] = {}
            for metric in METRICS:
                diff = (_resampled_ratios(sums[name][metric], draws)
                        - _resampled_ratios(sums["baseline"][metric], draws))
                row["vs_baseline"][metric] = {"difference": row[metric] - _ratio(*sums["baseline"][metric]),
                                              "ci": _interval(diff, settings.confidence)}
        table[name] = row
    return table


def cold_start_curve(records: LoopRecords, settings: ReportSettings) -> dict:
    """First-generation satisfaction at each user's 1st, 2nd, ... request, with normal-approximation intervals."""
    z = _normal_quantile(0.5 + settings.confidence / 2.0)
    interaction, satisfied = records.column("interaction"), records.column("first_satisfied").astype(np.float64)
    score = records.column("first_satisfaction")
    curve: dict[str, list] = {"interaction": [], "first_satisfaction": [], "ci": [], "satisfaction_score": [], "users": []}
    for n in range(settings.curve_interactions):
        chosen = interaction == n
        count = int(chosen.sum())
        if count == 0:
            break
        p = float(satisfied[chosen].mean())
        half = z * math.sqrt(p * (1.0 - p) / count)
        curve["interaction"].append(n + 1)
        curve["first_satisfaction"].append(p)
        curve["ci"].append([max(0.0, p - half), min(1.0, p + half)])
        curve["satisfaction_score"].append(float(score[chosen].mean()))
        curve["users"].append(count)
    return curve


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF by bisection on ``erf`` (no SciPy needed)."""
    low, high = -10.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2.0
        if 0.5 * (1.0 + math.erf(mid / math.sqrt(2.0))) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def format_table(table: dict[str, dict], confidence: float,
                 generation: str = "generation simulated, no ACE-Step audio") -> str:
    """The seed's table as Markdown: each figure with its interval; ``generation`` says how pieces were made."""
    level = f"{100 * confidence:g}%"
    lines = [f"| policy | {' | '.join(LABELS[m] for m in METRICS)} |", "|---" * (len(METRICS) + 1) + "|"]
    for name, row in table.items():
        cells = []
        for metric in METRICS:
            lo, hi = row[f"{metric}_ci"]
            digits = 2 if metric == "edits" else 3
            cells.append(f"{row[metric]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append(f"({level} bootstrap intervals over users; {generation}.)")
    return "\n".join(lines)


def plot_table(table: dict[str, dict], path: Path, confidence: float,
               generation: str = "simulated generation") -> Path:
    """One bar panel per metric, each bar with its interval."""
    names = list(table)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    for ax, metric in zip(axes, METRICS):
        values = [table[n][metric] for n in names]
        low = [v - table[n][f"{metric}_ci"][0] for n, v in zip(names, values)]
        high = [table[n][f"{metric}_ci"][1] - v for n, v in zip(names, values)]
        ax.bar(names, values, yerr=[low, high], capsize=4, color=[f"C{i}" for i in range(len(names))])
        ax.set_title(LABELS[metric], fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Closed-loop experiment ({generation}), {100 * confidence:g}% bootstrap intervals", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_cold_start(curves: dict[str, dict], path: Path, exploration_interactions: int,
                    generation: str = "simulated generation") -> Path:
    """First-generation satisfaction against the number of interactions, one line (with band) per policy."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, curve) in enumerate(curves.items()):
        xs = curve["interaction"]
        ax.plot(xs, curve["first_satisfaction"], marker="o", ms=3, color=f"C{i}", label=name)
        ax.fill_between(xs, [c[0] for c in curve["ci"]], [c[1] for c in curve["ci"]], color=f"C{i}", alpha=0.15)
    if exploration_interactions:
        ax.axvline(exploration_interactions + 0.5, ls="--", lw=1, color="grey", label="end of exploration")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("interaction (the user's n-th request)")
    ax.set_ylabel("first-generation satisfaction")
    ax.set_title(f"Cold start ({generation})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
