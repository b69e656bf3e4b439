"""The privacy section of a run's metrics.json: the guarantees as accounted, whom they hold against, what they cover."""

from __future__ import annotations

from privacy.accounting import fast_rdp_epsilon
from privacy.banded_mf import error_against_independent, participations
from privacy.contribution import LOSS_BOUND, STATISTIC_WEIGHT, STATISTICS, contribution_sensitivity
from privacy.randomness import SEEDED_WARNING
from privacy.distributed_dp import DistributedDiscreteGaussian
from privacy.distributed_release import epsilon_when_joined
from server.run_state import RunState
from server.secagg import SecureAggregator
from server.settings import RunSettings, bands_of


def record_epsilon_per_training(settings: RunSettings) -> float:
    """The most record-level epsilon one local training can cost a device: DP-SGD with every example in every
    batch (q = 1, a device with at most a batch of examples) for ``train.epochs`` steps; larger logs cost less."""
    record = settings.privacy.record
    assert record is not None
    return fast_rdp_epsilon([(record.noise_multiplier, 1.0, settings.train.epochs)], delta=record.delta)


def privacy_report(settings: RunSettings, state: RunState, user_epsilon: float | None,
                   secure: SecureAggregator | None, coordinates: int, *, evaluation_releases: int,
                   plan: DistributedDiscreteGaussian | None = None) -> dict:
    """User-level ε (from the run's ledger: ``user_epsilon``, covering ``state.round`` training releases and
    ``evaluation_releases`` releases of the devices' scores; ``plan``: the devices' noise under ``privacy=distributed``), the record-level parameters (each device keeps its own
    ledger), SecAgg's parameters (``coordinates``: model size, for its sensitivity), and notes on what each
    guarantee covers and whom it holds against."""
    p, sim = settings.privacy, settings.simulation
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
            "sample_rate": sim.sample_rate, "clipping_norm": p.clipping_norm, "clipping": p.clipping,
            "final_clipping_norm": state.clipping_norm, "rounds": state.round,
            "evaluation_releases": evaluation_releases, "releases": state.ledger.steps, "accountant": p.accountant,
            "target_epsilon": p.target_epsilon, "statistics": list(STATISTICS), "statistic_weight": STATISTIC_WEIGHT,
            "loss_bound": LOSS_BOUND, "sensitivity_over_clipping_norm": contribution_sensitivity(1.0),
        }
        report["notes"].append(
            "User-level (ε, δ) covers everything the devices sent: every round's release and the devices' evaluation. "
            "Each device's contribution is its update clipped to C plus bounded statistics (participated, unclipped, "
            "loss), of norm at most S = C·sqrt(1 + 3β²); " + (
                "no sampling assumed (privacy.mechanism=bandmf, below); " if p.banded else
                "Poisson sampling with rate q per round; Gaussian noise z·S on every coordinate of the sum; ") +
            "the update divided by the expected count. Every per-round figure "
            "(participants, unclipped fraction, train loss) and the devices' scores are read from those noisy sums. "
            "Against whom: anyone who sees the released models and reports; the server is trusted with the "
            "individual contributions before the noise (central DP), or only with their sum under SecAgg+."
        )
        if plan is not None:
            report["user_level"]["distributed"] = {
                "device_variance": plan.device_variance, "scale": plan.scale, "modulus_bits": plan.bits,
                "norm_bound": plan.norm_bound, "min_survivors": plan.min_survivors,
                "max_contributors": plan.max_contributors, "wrap_probability_bound": plan.wrap_probability(),
                "accounting": "Kairouz, Liu & Steinke 2021 (sum of discrete Gaussians) + Zhu & Wang 2019 (Poisson "
                              "subsampled RDP, general bound)",
                "epsilon_against_server": {str(k): epsilon_when_joined(plan, k, delta=p.delta)
                                           for k in sorted({1, max(1, round(sim.sample_rate * state.round))})},
            }
            report["notes"].append(
                "privacy=distributed: the server added no noise and never saw an un-noised sum. Each device rotated, "
                "scaled and rounded its bounded contribution and added its own share of discrete Gaussian noise (OS "
                "entropy) before SecAgg+; the shares of min_survivors devices carry the noise ε is accounted for, and "
                "a round with fewer survivors released nothing (still charged). The devices joined rounds by their own "
                "OS-entropy coins, so ε (amplified by that sampling) holds against anyone who sees the models but not "
                "who joined, whatever the server does. The server sees who joined: against it, a device that joined k "
                "rounds has the unamplified ε of k releases (epsilon_against_server, by k). Both assume SecAgg+ holds "
                "(fewer than its reconstruction threshold of a device's neighbours collude with the server) and that "
                "the counted survivors ran this ClientApp unmodified (a server that also runs sybil devices removes "
                "their shares from the count)."
            )
        if p.banded:
            bands = bands_of(settings)
            report["user_level"]["sample_rate"] = None
            report["user_level"]["banded"] = {
                "mechanism": "DP-FTRL, banded matrix factorisation (Choquette-Choo et al. 2023)", "bands": bands,
                "max_participations": participations(sim.rounds, bands), "cohort_share": 1.0 / bands,
                "error_vs_independent_noise": error_against_independent(sim.rounds, bands),
                "accounting": "k unamplified releases of the Gaussian mechanism (sample rate 1)",
            }
            report["notes"].append(
                f"privacy.mechanism=bandmf: no amplification by sampling is assumed. The users were split into {bands} "
                "groups, one trained each round; each device joined rounds at least privacy.bands apart (its own "
                "ledger sits out a round sooner), so it joined at most k = ceil(rounds / bands) of them. The server "
                "added to each round's sum Gaussian noise correlated across rounds (C^-1 Z, C the banded factor, Z "
                "i.i.d. N(0, (z·S)²) from the OS, kept in memory only for the last bands rounds and never stored); "
                "every release is post-processing of C X + Z, whose sensitivity under that separation is sqrt(k)·S. "
                "ε holds whoever the server picks each round, with the server trusted to add the noise."
            )
        if p.clipping == "adaptive":
            report["notes"].append(
                f"Adaptive clipping (Andrew et al. 2021): C followed the {p.clipping_quantile:g} quantile of the "
                "update norms, read from each round's noisy unclipped count (post-processing, no extra privacy)."
            )
        if any(r["skipped_busy"] for r in state.rounds):
            report["notes"].append("Some sampled nodes were still busy with an earlier round and were skipped: a "
                                   "dropout, which does not weaken the accounted guarantee.")
    if p.record_level and p.record is not None:
        report["record_level"] = {
            "epsilon_per_round_max": record_epsilon_per_training(settings), "delta": p.record.delta,
            "noise_multiplier": p.record.noise_multiplier, "max_grad_norm": p.record.max_grad_norm,
            "target_epsilon": p.record.target_epsilon, "accountant": "rdp",
        }
        report["notes"].append(
            "Record-level ε (DP-SGD on the device) protects one prediction example of a user, not the user: one event "
            "sits in up to population.window examples and feeds the decayed counts of every later one. Each device "
            "keeps its own ledger over every round and run it trained in and declines past its budget; no device "
            "reports its ε."
        )
    if secure is not None:
        sa = settings.secagg
        clipping_norm = state.clipping_norm or p.clipping_norm
        report["secure_aggregation"] = {
            "protocol": "SecAgg+ (Flower legacy workflow)", "num_shares": sa.num_shares,
            "reconstruction_threshold": sa.reconstruction_threshold, "quantization_range": sa.quantization_range,
            "error_bound_per_client": secure.error_bound(clipping_norm),  # type: ignore[arg-type]
            "sensitivity": secure.sensitivity(clipping_norm, coordinates + len(STATISTICS)),  # type: ignore[arg-type]
            "refused_rounds": sum(1 for r in state.rounds if r.get("secagg_halted")),
        }
        report["notes"].append(
            "Secure aggregation: the server saw only the sum of the devices' contributions, each bounded on its device "
            "(the guarantee assumes devices run this ClientApp unmodified). The unmasked weight factor must equal the "
            "contributors × T and every coordinate of the integer sum lie in its range, or the round releases "
            "nothing (refused_rounds). Each coordinate is quantised over ±C, so one device's contribution can grow "
            "by one step per coordinate (to at most `sensitivity`) and the noise std is z·sensitivity: ε is exactly as "
            "accounted. The devices' evaluation does not run under SecAgg+ (it would show the server one device's "
            "scores)."
        )
    return report
