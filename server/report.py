"""What a run writes for people: metrics.json and PNG plots of accuracy and privacy budget against round."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402


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
    fd, tmp = tempfile.mkstemp(prefix=".metrics-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(_finite_or_none(payload), handle, indent=2)
    os.replace(tmp, path)


def _plot_against_round(path: Path, xs: list, ys: list, *, label: str, ylabel: str,
                        lines: list[tuple[float, str, str | None]]) -> Path:
    """Write one line plot of ``ys`` against round to ``path``, with dashed horizontal reference ``lines``
    (value, label, colour; None takes the next colour of the cycle)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o", ms=3, label=label)
    for value, name, color in lines:
        ax.axhline(value, ls="--", lw=1, label=name, color=color)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rounds(rounds: list[dict], output_dir: Path, *, baselines: dict[str, float] | None = None,
                target_epsilon: float | None = None) -> list[Path]:
    """accuracy.png (held-out top-1 per round, baselines as lines) and epsilon.png (user-level epsilon spent)."""
    if not rounds:
        return []
    xs = [r["round"] for r in rounds]
    baseline_lines = [(value, name.replace("_", " "), None) for name, value in (baselines or {}).items()
                      if value is not None]
    paths = [_plot_against_round(output_dir / "accuracy.png", xs, [r["eval_top1"] for r in rounds],
                                 label="global model", ylabel="held-out top-1 accuracy (next kept genre)",
                                 lines=baseline_lines)]
    eps = [r.get("epsilon") for r in rounds]
    if any(e is not None and math.isfinite(e) for e in eps):
        target_line = [] if target_epsilon is None else [(target_epsilon, "target ε", "red")]
        paths.append(_plot_against_round(output_dir / "epsilon.png", xs, eps, label="user-level ε spent",
                                         ylabel="ε", lines=target_line))
    return paths
