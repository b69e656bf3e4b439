"""What a round of a run reports: its metrics.json row, its progress line, and the final federated evaluation.

Every figure about the devices comes from a release: the round's noisy statistics (participants, the share of
unclipped updates, the mean loss) and the noisy sum of the evaluation scores. The counts of replies (failed,
rejected, busy) are what the server sees of the network, not what a device reported.
"""

from __future__ import annotations

import numpy as np

from privacy.contribution import LOSS_BOUND
from protocol.reply_layout import EVAL_SCORES
from server.run_state import RoundOutcome
from server.settings import RunSettings


def round_row(server_round: int, outcome: RoundOutcome, scores: dict[str, float], epsilon: float | None, *,
              secure: bool, seconds: float) -> dict:
    """The round's row of metrics.json."""
    s = outcome.statistics
    row = {
        "round": server_round,
        "train_loss": s.mean_loss,
        "eval_top1": scores["top1"],
        "eval_nll": scores["nll"],
        "epsilon": epsilon,
        "participants": s.participants,
        "unclipped_fraction": s.unclipped_fraction,
        "statistics_noisy": s.noisy,
        "clipping_norm": outcome.clipping_norm,
        "replies": outcome.replies,
        "sampled": outcome.sampled,
        "skipped_busy": outcome.skipped_busy,
        "failed": outcome.failed,
        "rejected": outcome.rejected,
        "halted": outcome.halted,
        "seconds": seconds,
    }
    if secure:
        row["secagg_halted"] = outcome.halted
    return row


def round_line(row: dict, settings: RunSettings, scored: bool) -> str:
    """The round's progress line (``scored``: the server scored the model on held-out users). Figures read from a
    noisy release are marked with ~."""
    approx = "~" if row["statistics_noisy"] else ""
    eps_text = f" · ε {row['epsilon']:.2f}/{settings.privacy.target_epsilon:g}" if row["epsilon"] is not None else ""
    loss_text = f"{approx}{row['train_loss']:.3f}" if row["train_loss"] is not None else "-"
    eval_text = f" · held-out top-1 {row['eval_top1']:.3f}" if scored else ""
    clip_text = f" · C {row['clipping_norm']:.3g}" if row["clipping_norm"] is not None else ""
    return (
        f"round {row['round']}/{settings.simulation.rounds} · {approx}{max(row['participants'], 0.0):.0f} trained"
        f" of {row['sampled']} sampled ({row['failed']} failed, {row['rejected']} rejected)"
        f" · loss {loss_text} · unclipped {approx}{row['unclipped_fraction']:.2f}{clip_text}{eval_text}{eps_text}"
        f" · {row['seconds']:.1f} s"
    )


def federated_evaluation_summary(answered: int, total: np.ndarray, *, noisy: bool, sample_rate: float) -> dict:
    """The devices' own scores of the final model from the (noisy) sum of their score vectors: per-device means
    over the devices that scored (each device counts once), NLLs back in nats. ``answered - participated`` replies
    were malformed or had nothing to score."""
    sums = dict(zip(EVAL_SCORES, np.asarray(total, dtype=np.float64).tolist()))
    devices = sums["participated"]
    summary: dict = {"answered": answered, "devices": devices, "noisy": noisy, "sample_rate": sample_rate}
    if devices >= 1.0:
        for key in ("top1", "nll", "personal-top1", "personal-nll"):
            scale = LOSS_BOUND if key.endswith("nll") else 1.0
            summary[key.replace("-", "_")] = float(np.clip(sums[key] / devices, 0.0, 1.0)) * scale
    return summary


def final_lines(metrics: dict) -> list[str]:
    """What a run prints when it ends: the final model's scores, the devices' own (released) scores, the baselines
    and the privacy spent."""
    final, privacy = metrics["final"], metrics["privacy"]
    lines = []
    if final["eval_top1"] is not None and final["eval_top1"] == final["eval_top1"]:  # NaN: the server scored nothing
        lines.append(f"held-out top-1 of the global model: {final['eval_top1']:.3f} (NLL {final['eval_nll']:.3f})")
    if privacy.get("warning"):  # privacy.noise=seeded
        lines.append(f"privacy.noise=seeded: {privacy['warning']}")
    federated = final.get("federated_eval") or {}
    if "personal_top1" in federated:
        how = "a noisy sum, counted in ε" if federated["noisy"] else "exact: no privacy"
        lines.append(f"  on ~{max(federated['devices'], 0.0):.0f} devices' own latest points ({how}): global "
                     f"{federated['top1']:.3f} (NLL {federated['nll']:.3f}), personalised on the device "
                     f"{federated['personal_top1']:.3f} (NLL {federated['personal_nll']:.3f})")
    elif "skipped" in federated:
        lines.append("  devices' own scores: not asked for (the evaluation would pass the privacy budget)")
    elif federated:
        lines.append(f"  devices' own scores: too few devices scored (~{federated['devices']:.1f}) to report")
    for name, value in final["baselines"].items():
        if value is not None:
            lines.append(f"  baseline {name.replace('_', ' ')}: {value:.3f}")
    if privacy["user_level"]:
        u = privacy["user_level"]
        evaluation = " + the devices' evaluation" if u["evaluation_releases"] else ""
        banded = u.get("banded")
        sampling = (f"DP-FTRL, {banded['bands']} bands, no sampling assumed" if banded else f"q={u['sample_rate']}")
        lines.append(f"user-level privacy over d={privacy['model_parameters']} parameters: ε={u['epsilon']:.3f} "
                     f"δ={u['delta']:g} (z={u['noise_multiplier']:.3f}, {sampling}, C={u['clipping_norm']}"
                     f"{' adaptive' if u['clipping'] == 'adaptive' else ''}, {u['rounds']} rounds"
                     f"{evaluation}, {u['accountant']}); it covers "
                     "everything the devices sent")
    if privacy["record_level"]:
        r = privacy["record_level"]
        lines.append(f"record-level privacy: each device's own ledger; at most ε={r['epsilon_per_round_max']:.3f} "
                     f"(δ={r['delta']:g}) per local training, budget {r['target_epsilon']:g} per device")
    if metrics.get("stopped_early"):
        lines.append(metrics["stopped_early"])
    return lines
