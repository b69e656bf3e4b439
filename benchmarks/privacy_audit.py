"""Empirical privacy audit of user-level DP-FedAvg: a canary user, a loss-threshold attack, and the epsilon it proves.

For each privacy setting (no DP, then user-level DP calibrated to each ``--epsilons`` value) the federation of
``simulations.audit.AuditConfig`` is trained ``--trials`` times with the canary user and as many times without it,
through the project's own client update and server aggregation (see ``simulations/audit.py``). The attacker scores
each released model by the canary's loss. The table shows the attack's AUC (0.5 is chance), the epsilon lower bound
its best threshold proves at 95% confidence, next to the epsilon the accountant reports for the same mechanism, and
what the released models are worth (held-out top-1; the majority-genre baseline for scale).

Run: ``.venv/bin/python benchmarks/privacy_audit.py [--trials 50] [--epsilons 1 8] [--quick]`` (and
``--num-users 20 --sample-rate 0.5 --rounds 8`` for a subsampled federation). The last line printed is one JSON object
with every figure. One thread; one to four seconds per trained model on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privacy.randomness import SEEDED_WARNING  # noqa: E402
from simulations.audit import AuditConfig, AuditResult, audit, build_setup  # noqa: E402


def _row(result: AuditResult) -> str:
    target = "-" if result.target_epsilon is None else f"{result.target_epsilon:g}"
    accounted = "inf" if math.isinf(result.accounted_epsilon) else f"{result.accounted_epsilon:.3f}"
    z = "-" if result.noise_multiplier is None else f"{result.noise_multiplier:.3f}"
    b = result.bound
    rates = f"{b.tpr:.2f}/{b.fpr:.2f}" if b.epsilon > 0 else "-"
    loss = f"{statistics.median(result.losses_in):.3f}/{statistics.median(result.losses_out):.3f}"
    return (f"{result.label:<14}{target:>7}{accounted:>10}{z:>8}{result.auc:>7.3f}{b.epsilon:>9.3f}{rates:>11}"
            f"{loss:>14}{(result.top1_in + result.top1_out) / 2:>8.3f}{result.seconds:>8.0f}")


def _finite(value: float) -> float | None:
    """JSON has no infinity: an infinite epsilon (no DP) or threshold (no bound) is written as null."""
    return None if math.isinf(value) else value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50, help="trained models per world (canary in / out)")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 8.0], help="user-level DP budgets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-users", type=int, default=AuditConfig.num_users, help="ordinary users")
    parser.add_argument("--sample-rate", type=float, default=AuditConfig.sample_rate, help="Poisson rate q")
    parser.add_argument("--rounds", type=int, default=AuditConfig.rounds)
    parser.add_argument("--noise", choices=["secure", "seeded"], default="secure",
                        help="the server's noise: fresh OS entropy per model, or the trial's seeded stream")
    parser.add_argument("--quick", action="store_true", help="8 trials per world, epsilon 1 only: a smoke run")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trials, epsilons = (8, [1.0]) if args.quick else (args.trials, args.epsilons)
    config = AuditConfig(seed=args.seed, trials=trials, num_users=args.num_users, sample_rate=args.sample_rate,
                         rounds=args.rounds, noise=args.noise)
    setup = build_setup(config)
    print(f"canary: one session a day at 03:00 local for {config.days} days, picks {setup.decoy_genre!r} then keeps "
          f"{setup.rare_genre!r} with the organ at 24 BPM ({len(setup.canary)} prediction points)")
    print(f"federation: {config.num_users} users + the canary's slot, q={config.sample_rate}, {config.rounds} rounds, "
          f"C={config.clipping_norm}, delta={config.delta:g}; model {config.model}; {trials} models per world; "
          f"server noise {config.noise}")
    print(f"majority-genre baseline top-1 on {config.eval_users} held-out users: {setup.majority_top1:.3f}\n")
    header = (f"{'setting':<14}{'target ε':>7}{'acct. ε':>10}{'z':>8}{'AUC':>7}{'ε lb 95%':>9}{'TPR/FPR':>11}"
              f"{'loss in/out':>14}{'top-1':>8}{'s':>8}")
    print(header)
    print("-" * len(header))
    results = []
    started = time.perf_counter()
    for target in [None, *epsilons]:
        result = audit(setup, target_epsilon=target)
        results.append(result)
        print(_row(result), flush=True)
    print("\nAUC: P(the attack ranks a model trained with the canary above one trained without it); ε lb: "
          "Clopper-Pearson at the best threshold, Bonferroni over thresholds (Kairouz et al. 2015 hypothesis-test "
          "bound); it must never exceed the accounted ε.")
    if config.noise == "seeded":
        print(f"privacy.noise=seeded: {SEEDED_WARNING}")
    summary = {
        "benchmark": "privacy_audit",
        "config": dataclasses.asdict(config),
        "canary": {"rare_genre": setup.rare_genre, "decoy_genre": setup.decoy_genre, "points": len(setup.canary)},
        "majority_top1": setup.majority_top1,
        "results": [{**dataclasses.asdict(r), "bound": {**dataclasses.asdict(r.bound), "threshold": _finite(
            r.bound.threshold)}, "accounted_epsilon": _finite(r.accounted_epsilon)} for r in results],
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
