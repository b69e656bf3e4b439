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


def plot_rounds(rounds: list[dict], output_dir: Path, *, baselines: dict[str, float] | None = None,
                target_epsilon: float | None = None) -> list[Path]:
    """accuracy.png (held-out top-1 per round, baselines as lines) and epsilon.png (user-level epsilon spent)."""
    if not rounds:
        return []
    xs = [r["round"] for r in rounds]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, [r["eval_top1"] for r in rounds], marker="o", ms=3, label="global model")
    for name, value in (baselines or {}).items():
        if value is not None:
            ax.axhline(value, ls="--", lw=1, label=name.replace("_", " "), color=None)
    ax.set_xlabel("round")
    ax.set_ylabel("held-out top-1 accuracy (next kept genre)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(output_dir / "accuracy.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    eps = [r.get("epsilon") for r in rounds]
    if any(e is not None and math.isfinite(e) for e in eps):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, eps, marker="o", ms=3, label="user-level ε spent")
        if target_epsilon is not None:
            ax.axhline(target_epsilon, ls="--", color="red", lw=1, label="target ε")
        ax.set_xlabel("round")
        ax.set_ylabel("ε")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        paths.append(output_dir / "epsilon.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths
