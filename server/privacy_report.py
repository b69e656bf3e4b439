"""The privacy section of a run's metrics.json: the guarantees as accounted, and what each does not cover."""

from __future__ import annotations

import statistics

from privacy.randomness import SEEDED_WARNING
from server.run_state import RunState
from server.secagg import SecureAggregator
from server.settings import RunSettings


def privacy_report(settings: RunSettings, state: RunState, user_epsilon: float | None,
                   secure: SecureAggregator | None, coordinates: int) -> dict:
    """User-level ε (from the run's ledger: ``user_epsilon``), record-level ε as devices reported it, SecAgg's
    parameters (``coordinates``: model size, for its sensitivity), and notes on what each guarantee covers."""
    p, sim = settings.privacy, settings.simulation
    record_eps = list(state.record_epsilon.values())
    report: dict = {"mode": p.mode, "noise": p.noise, "model_parameters": coordinates, "user_level": None,
                    "record_level": None, "notes": []}
    if p.noise == "seeded":
        report["warning"] = SEEDED_WARNING
        report["notes"].append(f"privacy.noise=seeded: {SEEDED_WARNING}. The server's noise and the simulated "
                               "devices' DP-SGD noise were drawn from streams keyed by the run seed.")
    else:
        report["notes"].append("privacy.noise=secure: the server's noise came from the OS's CSPRNG at each release "
                               "(floating-point-safe sum of 4 draws), each device's DP-SGD noise and batches from its "
                               "own entropy; none of it derives from the seed, and none is stored.")
    if p.user_level:
        report["user_level"] = {
            "epsilon": user_epsilon, "delta": p.delta, "noise_multiplier": state.noise_multiplier,
            "sample_rate": sim.sample_rate, "clipping_norm": p.clipping_norm, "rounds": state.ledger.steps,
            "accountant": p.accountant, "target_epsilon": p.target_epsilon,
        }
        report["notes"].append(
            "User-level (ε, δ) covers the released global models: Poisson sampling with rate q per round, each update "
            "clipped to the clipping norm, Gaussian noise z·C on the sum, divided by the expected count qN. Per-round "
            "diagnostics (train_loss, clipped_fraction, mean_update_norm, client counts) come from raw client replies "
            "and are not covered by ε."
        )
        if any(r["skipped_busy"] for r in state.rounds):
            report["notes"].append("Some sampled nodes were still busy with an earlier round and were skipped: a "
                                   "dropout, which does not weaken the accounted guarantee.")
    if p.record_level and p.record is not None:
        report["record_level"] = {
            "epsilon_max": max(record_eps) if record_eps else 0.0,
            "epsilon_median": statistics.median(record_eps) if record_eps else 0.0,
            "delta": p.record.delta, "noise_multiplier": p.record.noise_multiplier,
            "max_grad_norm": p.record.max_grad_norm, "target_epsilon": p.record.target_epsilon,
            "accountant": "rdp", "clients_reporting": len(record_eps),
        }
        report["notes"].append(
            "Record-level ε protects single events of one user (DP-SGD on the device), not the user; each device "
            "tracks it over every round it trained and declines past its budget."
        )
    if secure is not None:
        sa = settings.secagg
        report["secure_aggregation"] = {
            "protocol": "SecAgg+ (Flower legacy workflow)", "num_shares": sa.num_shares,
            "reconstruction_threshold": sa.reconstruction_threshold, "clipping_range": secure.clipping_range,
            "quantization_range": sa.quantization_range, "mean_error_bound": secure.error_bound,
            "sensitivity": secure.sensitivity(coordinates),
        }
        report["notes"].append(
            "Secure aggregation: the server saw only the sum of the clients' updates, each clipped to the clipping "
            "norm on its device (the guarantee assumes devices run this ClientApp unmodified). Per-client "
            "diagnostics (train_loss, clipped_fraction, mean_update_norm, record ε) are not reported. Each "
            "coordinate is quantised over ±clipping_range, so the mean differs from the exact mean by at most "
            "mean_error_bound per coordinate. Rounding can lengthen one contribution past the clipping norm (to at "
            "most `sensitivity`), so the noise std is noise_multiplier·sensitivity instead of noise_multiplier·C: "
            "ε is exactly as accounted."
        )
    return report
