"""What a run writes for people: metrics.json and PNG plots of accuracy and privacy budget against round."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from storage.atomic import atomic_write  # noqa: E402


def _finite_or_none(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def write_json(path: Path, payload: dict) -> None:
    """Atomic JSON write; non-finite floats become null (JSON has no inf/NaN)."""
    with atomic_write(path, "w") as handle:
        json.dump(_finite_or_none(payload), handle, indent=2)


BASELINE_STYLES = (("tab:orange", "--"), ("tab:green", ":"), ("tab:purple", "-."), ("tab:brown", (0, (5, 1, 1, 1))))
"""Colour and dash of each baseline line, in order: no two baselines look alike."""


def figure_against_round(xs: list, ys: list, *, label: str, ylabel: str,
                         lines: list[tuple[float, str, tuple[str, object]]], y_from_zero: bool = False) -> Figure:
    """A line plot of ``ys`` against round, rounds as whole numbers from the first x, with horizontal reference
    ``lines`` (value, label, (colour, dash))."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o", ms=3, label=label, color="tab:blue")
    for value, name, (color, dash) in lines:
        ax.axhline(value, ls=dash, lw=1.2, label=name, color=color)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=min(xs))
    if y_from_zero:
        ax.set_ylim(bottom=0)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rounds(rounds: list[dict], output_dir: Path, *, baselines: dict[str, float] | None = None,
                target_epsilon: float | None = None, initial: dict | None = None) -> list[Path]:
    """accuracy.png (held-out top-1 per round from the initial model on, baselines as lines) and epsilon.png
    (user-level ε spent, from 0 before round 1)."""
    if not rounds:
        return []
    xs, top1 = [r["round"] for r in rounds], [r["eval_top1"] for r in rounds]
    if initial is not None and initial.get("eval_top1") is not None:
        xs, top1 = [initial["round"], *xs], [initial["eval_top1"], *top1]
    named = [(value, name.replace("_", " ")) for name, value in (baselines or {}).items() if value is not None]
    baseline_lines = [(value, name, BASELINE_STYLES[i % len(BASELINE_STYLES)]) for i, (value, name) in enumerate(named)]
    paths = [_save(figure_against_round(xs, top1, label="global model",
                                        ylabel="held-out top-1 accuracy (next kept genre)", lines=baseline_lines),
                   output_dir / "accuracy.png")]
    eps_xs, eps = [r["round"] for r in rounds], [r.get("epsilon") for r in rounds]
    if any(e is not None and math.isfinite(e) for e in eps):
        if eps_xs[0] == 1:  # a fresh run has spent nothing before round 1
            eps_xs, eps = [0, *eps_xs], [0.0, *eps]
        target_line = [] if target_epsilon is None else [(target_epsilon, "target ε", ("red", "--"))]
        paths.append(_save(figure_against_round(eps_xs, eps, label="user-level ε spent", ylabel="ε",
                                                lines=target_line, y_from_zero=True), output_dir / "epsilon.png"))
    return paths
