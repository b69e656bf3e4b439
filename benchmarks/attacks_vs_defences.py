"""Hostile clients against the server's defences: the global model's held-out accuracy, attack x defence.

Each cell trains one federation from scratch for a fixed number of rounds, with a fraction of the synthetic users
malicious (``simulation.attack``; the same users in every cell, chosen from seed and user id alone) and one
defence on the server, then scores the global model on held-out users (top-1 accuracy and NLL):

  attacks   none, scale (update x --scale), sign_flip (update x -1), nan_arrays, missing_array, extra_array (malformed
            replies: the server must reject and count them), label_flip (trains on permuted genres)
  defences  FedAvg (no DP, weighted by num-examples); FedAvg+DP (user-level DP-FedAvg: every update clipped to
            --clip on the server, Gaussian noise calibrated for --dp-epsilon over the rounds, epsilon accounted by
            the run's PrivacyLedger); FedMedian; FedTrimmedAvg (--beta per side); Krum (f = --krum-f, default
            ceil(fraction x clients per round))

Every cell runs the project's real code in this process: ``server.federation.FederatedRun`` (sampling, Flower
Messages, ``server.replies.judge_reply``, ``server.aggregation`` (the running sum) with Flower's strategies, the privacy
ledger, held-out scoring of ``simulations.federation.held_out``) over ``simulations.federation.inprocess_grid.InProcessGrid``,
whose nodes call the simulation's ClientApp (``client.local_update.local_update`` and the attack mod of
``simulations.federation.attacks``). Only Ray's
worker processes are left out. Configuration is composed from conf/ with Hydra overrides and validated as usual.

Prints the Markdown table (top-1, NLL in brackets), the rejected replies per attack, the baselines, the DP
column's epsilon, and last one JSON line. ``--quick`` runs 20 users for 10 rounds (about 4 minutes here).

    python benchmarks/attacks_vs_defences.py [--quick] [--fraction 0.2] [--rounds 20] [--out DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import torch  # noqa: E402

from protocol.instructions import ATTACK_KINDS  # noqa: E402
from simulations.federation.attacks import MALFORMED_KINDS  # noqa: E402

DEFENCES = ("FedAvg", "FedAvg+DP", "FedMedian", "FedTrimmedAvg", "Krum")


def defence_overrides(defence: str, args: argparse.Namespace, krum_f: int) -> list[str]:
    """The Hydra overrides that select ``defence`` (strategy and privacy groups of conf/)."""
    return {
        "FedAvg": ["strategy=fedavg", "privacy=none"],
        "FedAvg+DP": ["strategy=fedavg", "privacy=user", f"privacy.target_epsilon={args.dp_epsilon}",
                      f"privacy.clipping_norm={args.clip}", f"privacy.delta={args.delta}"],
        "FedMedian": ["strategy=fedmedian", "privacy=none"],
        "FedTrimmedAvg": ["strategy=fedtrimmedavg", "privacy=none", f"strategy.beta={args.beta}"],
        "Krum": ["strategy=krum", "privacy=none", f"strategy.num_malicious_nodes={krum_f}"],
    }[defence]


def base_overrides(args: argparse.Namespace) -> list[str]:
    """The federation every cell shares: a small population, every user sampled at --sample-rate, client Adam."""
    return [
        "population=small", f"population.num_users={args.users}", f"population.eval_users={args.eval_users}",
        f"population.days={args.days}", "model=causal", f"model.hidden_size={args.hidden}",
        f"model.num_layers={args.layers}", f"model.dropout={0.3 if args.layers > 1 else 0.0}", f"seed={args.seed}",
        f"simulation.rounds={args.rounds}", f"simulation.sample_rate={args.sample_rate}",
        "simulation.final_eval_clients=0", "simulation.central_baseline_epochs=0", "deployment.warm_up_nodes=0",
        "simulation.nodes=0", "train.optimizer=adam", f"train.lr={args.lr}", f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
        f"train.max_examples={args.max_examples}",
    ]


def run_cell(overrides: list[str], output_dir: Path) -> dict:
    """One federation through ``FederatedRun`` over the in-process grid; returns its metrics.json content."""
    from server.federation import Progress
    from server.server_app import compose_settings
    from simulations.federation.inprocess import server_task_identity
    from simulations.federation.inprocess_grid import InProcessGrid
    from simulations.federation.simulation_client_app import app as client_app
    from simulations.federation.simulation_server_app import simulated_run

    logging.getLogger("flwr").setLevel(logging.WARNING)  # the strategies log every aggregation at INFO
    settings = compose_settings("config", overrides)
    grid = InProcessGrid(client_app, settings.population.num_users)
    with server_task_identity():
        return simulated_run(settings, output_dir, progress=Progress(io.StringIO())).run(grid)


def summarise(metrics: dict) -> dict:
    rounds = metrics["rounds"]
    user = metrics["privacy"]["user_level"]
    return {
        "top1": metrics["final"]["eval_top1"], "nll": metrics["final"]["eval_nll"],
        "initial_top1": metrics["initial"]["eval_top1"], "initial_nll": metrics["initial"]["eval_nll"],
        "rejected": sum(r["rejected"] for r in rounds), "failed": sum(r["failed"] for r in rounds),
        "updates": sum(r["replies"] for r in rounds), "epsilon": user["epsilon"] if user else None,
        "noise_multiplier": user["noise_multiplier"] if user else None, "baselines": metrics["final"]["baselines"],
    }


def markdown_table(cells: dict[tuple[str, str], dict], attacks: list[str], defences: list[str]) -> list[str]:
    lines = ["| attack | " + " | ".join(defences) + " | rejected |", "|---" * (len(defences) + 2) + "|"]
    for attack in attacks:
        row = [f"{cells[attack, d]['top1']:.3f} ({cells[attack, d]['nll']:.2f})" for d in defences]
        rejected = sorted({cells[attack, d]["rejected"] for d in defences})
        lines.append(f"| {attack} | " + " | ".join(row) + f" | {'/'.join(map(str, rejected))} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 users, 10 rounds, about 3 minutes: checks the machinery end to end; too small for the model to learn, so it does not rank the defences")
    parser.add_argument("--fraction", type=float, default=0.2, help="share of users that are malicious (default 0.2)")
    parser.add_argument("--scale", type=float, default=10.0, help="factor of the scale attack (default 10)")
    parser.add_argument("--attacks", default=",".join(ATTACK_KINDS), help="comma-separated attack kinds (default all)")
    parser.add_argument("--defences", default=",".join(DEFENCES), help="comma-separated defences (default all)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per cell (default 20; 10 with --quick)")
    parser.add_argument("--users", type=int, default=None, help="federation users (default 40; 20 with --quick)")
    parser.add_argument("--eval-users", type=int, default=60, help="held-out users scored, 10 points each (default 60)")
    parser.add_argument("--days", type=int, default=21, help="days of each user's synthetic log (default 21)")
    parser.add_argument("--sample-rate", type=float, default=0.5, help="Poisson sampling rate per round (default 0.5)")
    parser.add_argument("--hidden", type=int, default=32, help="hidden size of the causal LSTM (default 32)")
    parser.add_argument("--layers", type=int, default=1, help="LSTM layers (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="client batch size (default 32)")
    parser.add_argument("--lr", type=float, default=0.03, help="client Adam learning rate (default 0.03)")
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round (default 2)")
    parser.add_argument("--max-examples", type=int, default=32, help="examples per client per round (default 32)")
    parser.add_argument("--dp-epsilon", type=float, default=None, help="target user-level epsilon of FedAvg+DP (default 50)")
    parser.add_argument("--clip", type=float, default=0.5, help="user-level clipping norm of FedAvg+DP (default 0.5)")
    parser.add_argument("--delta", type=float, default=1e-3, help="user-level delta of FedAvg+DP, < 1/users (default 1e-3)")
    parser.add_argument("--beta", type=float, default=0.2, help="FedTrimmedAvg's trimmed fraction per side (default 0.2)")
    parser.add_argument("--krum-f", type=int, default=None, help="Krum's f (default ceil(fraction x clients per round))")
    parser.add_argument("--seed", type=int, default=0, help="run seed (sampling, malicious users, model init)")
    parser.add_argument("--out", type=Path, default=None, help="keep each cell's outputs here (default: a temp dir)")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (10 if args.quick else 20)
    args.users = args.users or (20 if args.quick else 40)
    args.eval_users = min(args.eval_users, 20) if args.quick else args.eval_users
    args.dp_epsilon = args.dp_epsilon if args.dp_epsilon is not None else 50.0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    attacks = [a for a in args.attacks.split(",") if a]
    defences = [d for d in args.defences.split(",") if d]
    unknown = sorted(set(attacks) - set(ATTACK_KINDS)) + sorted(set(defences) - set(DEFENCES))
    if unknown:
        sys.exit(f"error: unknown attack or defence {unknown}; attacks: {list(ATTACK_KINDS)}, defences: {list(DEFENCES)}")
    krum_f = args.krum_f if args.krum_f is not None else math.ceil(args.fraction * args.sample_rate * args.users)
    out = args.out or Path(tempfile.mkdtemp(prefix="attacks-"))
    print(f"{len(attacks)} attacks x {len(defences)} defences: {args.users} users (+{args.eval_users} held out), "
          f"{args.rounds} rounds at q={args.sample_rate}, causal LSTM {args.layers}x{args.hidden}, malicious fraction {args.fraction}, "
          f"Krum f={krum_f}; outputs in {out}", flush=True)
    cells: dict[tuple[str, str], dict] = {}
    started = time.perf_counter()
    for attack in attacks:
        for defence in defences:
            overrides = (base_overrides(args) + defence_overrides(defence, args, krum_f)
                         + [f"simulation.attack.kind={attack}", f"simulation.attack.fraction={args.fraction}",
                            f"simulation.attack.scale={args.scale}"])
            cell_started = time.perf_counter()
            cells[attack, defence] = summarise(run_cell(overrides, out / f"{attack}-{defence}"))
            c = cells[attack, defence]
            print(f"  {attack:>13} x {defence:<13} top-1 {c['top1']:.3f} NLL {c['nll']:.3f} "
                  f"({c['updates']} updates, {c['rejected']} rejected, {time.perf_counter() - cell_started:.0f} s)",
                  flush=True)
    first = cells[attacks[0], defences[0]]
    print(f"\nHeld-out top-1 (NLL) after {args.rounds} rounds; malicious fraction {args.fraction}; "
          f"the untrained model scores {first['initial_top1']:.3f} ({first['initial_nll']:.2f}).\n")
    for line in markdown_table(cells, attacks, defences):
        print(line)
    baselines = {k: v for k, v in first["baselines"].items() if v is not None}
    print("\nrejected: malformed replies the server refused and counted over all rounds (every defence saw the "
          "same ones); " + ", ".join(f"baseline {k.replace('_', ' ')} {v:.3f}" for k, v in baselines.items()) + ".")
    if "FedAvg+DP" in defences:
        dp = cells[attacks[0], "FedAvg+DP"]
        print(f"FedAvg+DP: user-level epsilon {dp['epsilon']:.2f} at delta {args.delta:g} accounted by the run's "
              f"PrivacyLedger (RDP, z={dp['noise_multiplier']:.3f}, q={args.sample_rate}, C={args.clip}, "
              f"{args.rounds} rounds).")
    print(f"total {time.perf_counter() - started:.0f} s")
    print(json.dumps({
        "fraction": args.fraction, "rounds": args.rounds, "users": args.users, "krum_f": krum_f,
        "dp_epsilon": cells[attacks[0], "FedAvg+DP"]["epsilon"] if "FedAvg+DP" in defences else None,
        "top1": {f"{a}/{d}": round(cells[a, d]["top1"], 4) for a in attacks for d in defences},
        "rejected": {a: cells[a, defences[0]]["rejected"] for a in attacks},
        "malformed_all_rejected": all(cells[a, d]["rejected"] > 0 for a in attacks if a in MALFORMED_KINDS
                                      for d in defences) if args.fraction > 0 else None,
    }))


if __name__ == "__main__":
    main()
