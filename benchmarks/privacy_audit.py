"""Privacy audit of user-level DP-FedAvg: the epsilon Dirac canary clients prove, next to the epsilon accounted.

For each ``--epsilons`` value the noise multiplier is calibrated as a run does, and ``--runs`` runs of
``--canaries-per-run`` canary clients (each in with probability 1/2) go through the mechanism that runs, round by
round (``simulations.audit``): Poisson sampling, clipping, noise from OS entropy, the ledger. An adversary who reads
every round's release tunes a likelihood-ratio test on one canary in four and bounds epsilon on the rest. The
mechanism's parameters (q, rounds, C, delta, accountant, noise source) come from ``conf/`` as ``make simulate``
composes it; Hydra overrides change them.

Columns: the accounted epsilon (the ledger, the run's accountant); the tight epsilon (the same ledger under the PRV
accountant: what a perfect audit could reach); the audit's lower bound at 95 % confidence with the counts behind it;
Steinke et al.'s one-run bound from the first run alone; "flagged" when the audit proves more than is accounted.
``--plant`` plants a bug in the mechanism (``simulations.audit_plants``) to show the audit catch it. The last line
printed is one JSON object with every figure.

    python benchmarks/privacy_audit.py                       # epsilon 1, 2, 8; 100,000 canaries each (~30 s)
    python benchmarks/privacy_audit.py --quick               # 4,000 canaries each: a smoke run (seconds)
    python benchmarks/privacy_audit.py --epsilons 2 --plant noise-halved
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

if TYPE_CHECKING:
    from simulations.audit import AuditResult

QUICK = {"runs": 2, "canaries_per_run": 2000}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from simulations.audit import AuditConfig
    from simulations.audit_plants import PLANTS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 2.0, 8.0], help="target epsilons")
    parser.add_argument("--runs", type=int, default=AuditConfig.runs, help="independent runs per epsilon")
    parser.add_argument("--canaries-per-run", type=int, default=AuditConfig.canaries_per_run)
    parser.add_argument("--canary-norm", type=float, default=AuditConfig.canary_norm,
                        help="a canary's update length in units of C")
    parser.add_argument("--alpha", type=float, default=AuditConfig.alpha, help="1 - confidence of each bound")
    parser.add_argument("--noise", choices=["secure", "seeded"], default=None,
                        help="noise, sampling and coins: OS entropy or --seed (default: privacy.noise of conf/)")
    parser.add_argument("--seed", type=int, default=0, help="keys every draw under --noise seeded")
    parser.add_argument("--plant", choices=sorted(PLANTS), default=None, help="plant a bug in the mechanism")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['runs']} runs x {QUICK['canaries_per_run']} "
                                                             "canaries per epsilon: a smoke run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. simulation.sample_rate=0.2")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.canaries_per_run = QUICK["runs"], QUICK["canaries_per_run"]
    return args


def _row(r: AuditResult) -> str:
    """One table row: the epsilons, the bounds and the counts behind them."""
    c, o = r.counts, r.one_run
    aimed, other = ("in", "out") if c.in_above else ("out", "in")
    return (f"| {r.config.target_epsilon:g} | {r.noise_multiplier:.3f} | {r.accounted_epsilon:.3f} | "
            f"{r.tight_epsilon:.3f} | **{r.epsilon:.2f}** | {aimed} {c.hits}/{c.trials}, {other} "
            f"{c.false_hits}/{c.false_trials} | {o.epsilon:.2f} | {o.correct}/{o.guesses} of {o.canaries} | "
            f"{'FLAGGED' if r.flagged else 'no'} | {r.seconds:.1f} |")


def _finite(value: float) -> float | None:
    """JSON has no infinity: an infinite epsilon (a noise multiplier of 0) is written as null."""
    return value if math.isfinite(value) else None


def main(argv: list[str] | None = None) -> dict:
    """Audit each target epsilon, print the table and the JSON summary, and return the summary."""
    args = parse_args(argv)
    from privacy.randomness import SEEDED_WARNING
    from server.server_app import compose_settings
    from simulations.audit import AuditConfig, audit
    from simulations.audit_plants import PLANTS

    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # Opacus' RDP, at epsilon 8
    settings = compose_settings("config", ["privacy=user", *args.overrides])
    game = dict(runs=args.runs, canaries_per_run=args.canaries_per_run, canary_norm=args.canary_norm,
                alpha=args.alpha, seed=args.seed, **({"noise": args.noise} if args.noise else {}))
    configs = [AuditConfig.from_settings(settings, target_epsilon=e, **game) for e in args.epsilons]
    first = configs[0]
    print(f"mechanism (conf/ + overrides): q = {first.sample_rate}, {first.rounds} rounds, C = {first.clipping_norm}, "
          f"delta = {first.delta:g}, accountant {first.accountant}; noise, sampling and coins: "
          f"{'OS entropy' if first.noise == 'secure' else f'seeded ({SEEDED_WARNING})'}")
    print(f"game: {first.runs} runs x {first.canaries_per_run} Dirac canaries (each in with probability 1/2, update "
          f"{first.canary_norm:g} C); 1 in {first.tune_every} tunes the attack; bounds at "
          f"{100 * (1 - first.alpha):g} % confidence" + (f"; PLANTED BUG: {args.plant}" if args.plant else ""))
    print()
    print("| target ε | z | accounted ε | tight ε (PRV) | audit ε ≥ | test fired on (held out) | one-run ε ≥ "
          "| right guesses | flagged | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    results = []
    for config in configs:
        with PLANTS[args.plant]() if args.plant else contextlib.nullcontext():
            result = audit(config)
        results.append(result)
        print(_row(result), flush=True)
    print()
    print("audit ε ≥: Clopper-Pearson bound of the chosen likelihood-ratio test on the held-out canaries (independent "
          "trials: each canary owns a coordinate); one-run ε ≥: Steinke et al. 2023 from the first run's held-out "
          "canaries (assumes only DP). Flagged: the audit's bound is above the accounted ε. s: the runs and the "
          f"attack; {time.perf_counter() - started:.0f} s in all, with calibrating z and accounting.")
    summary = {
        "benchmark": "privacy_audit", "plant": args.plant,
        "results": [{**dataclasses.asdict(r), "flagged": r.flagged, "accounted_epsilon": _finite(r.accounted_epsilon),
                     "tight_epsilon": _finite(r.tight_epsilon)} for r in results],
        "seconds": time.perf_counter() - started,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
