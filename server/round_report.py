"""What a round of a run reports: its metrics.json row, its progress line, and the final federated evaluation."""

from __future__ import annotations

import statistics

from server.run_state import RoundOutcome
from server.settings import RunSettings


def round_row(server_round: int, outcome: RoundOutcome, scores: dict[str, float], epsilon: float | None,
              record_epsilon: dict[int, float], *, record_level: bool, secure: bool, seconds: float) -> dict:
    """The round's row of metrics.json (``record_epsilon``: each client's latest record-level ε so far)."""
    record_eps = list(record_epsilon.values())
    row = {
        "round": server_round,
        "train_loss": outcome.train_loss,
        "eval_top1": scores["top1"],
        "eval_nll": scores["nll"],
        "epsilon": epsilon,
        "clients": outcome.clients,
        "sampled": outcome.sampled,
        "skipped_busy": outcome.skipped_busy,
        "failed": outcome.failed,
        "rejected": outcome.rejected,
        "declined": outcome.declined,
        "clipped_fraction": outcome.stats.clipped_fraction,
        "mean_update_norm": outcome.stats.mean_update_norm,
        "record_epsilon_max": max(record_eps) if record_level and record_eps else None,
        "record_epsilon_median": statistics.median(record_eps) if record_level and record_eps else None,
        "seconds": seconds,
    }
    if secure:
        row["secagg_halted"] = outcome.halted
    return row


def round_line(row: dict, settings: RunSettings, scored: bool) -> str:
    """The round's progress line (``scored``: the server scored the model on held-out users)."""
    eps_text = f" · ε {row['epsilon']:.2f}/{settings.privacy.target_epsilon:g}" if row["epsilon"] is not None else ""
    rec_text = f" · record ε max {row['record_epsilon_max']:.2f}" if row["record_epsilon_max"] is not None else ""
    loss_text = f"{row['train_loss']:.3f}" if row["train_loss"] is not None else "-"
    eval_text = f" · held-out top-1 {row['eval_top1']:.3f}" if scored else ""
    return (
        f"round {row['round']}/{settings.simulation.rounds} · {row['clients']}/{row['sampled']} clients"
        f" ({row['failed']} failed, {row['rejected']} rejected, {row['declined']} declined)"
        f" · loss {loss_text}{eval_text}{eps_text}{rec_text} · {row['seconds']:.1f} s"
    )


def federated_evaluation_summary(answered: int, metrics: list[dict]) -> dict:
    """The clients' own scores of the final model, weighted by their examples; ``answered - len(metrics)`` replies
    were malformed."""
    n = sum(m["num-examples"] for m in metrics)
    summary: dict = {"clients": len(metrics), "rejected": answered - len(metrics)}
    if n:
        for key in ("eval-top1", "eval-nll", "personal-top1", "personal-nll"):
            summary[key.replace("-", "_")] = sum(m[key] * m["num-examples"] for m in metrics) / n
    return summary
