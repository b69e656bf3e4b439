"""Privacy against utility: the DP global prior next to every simple rule, on the same held-out points.

One run trains, in this process with the project's own code (``simulations.federation.inprocess``: the ClientApp's
``local_update``, the server's clip / sum / noise / divide-by-qN and Flower's strategy, the privacy ledger):

- the federated model under user-level DP (``privacy=user`` at ``--epsilon``, ``--delta``; the noise multiplier is
  calibrated once for ``--rounds`` rounds at sampling rate ``--sample-rate`` and the printed epsilon is the
  ledger's);
- the same federation without privacy (``privacy=none``);
- the same model trained centrally, without privacy, on the pooled training points;
- the DP model personalised on each held-out device (``model.network.personalise``: a personal logit offset fit to the
  user's own earlier points, kept only if it helps on their latest ones);

and scores each, with every rule of ``simulations.yardstick``, on the ``--points`` latest prediction points of
``--eval-users`` held-out users (never trained on). Intervals are 95 % bootstraps over users. Prints a Markdown
table, the privacy report, and one JSON line last. Extra arguments are Hydra overrides applied to every model
(e.g. ``privacy.clipping_norm=0.05``); ``--only-dp`` skips the two non-private models (for sweeps).

    python benchmarks/privacy_utility.py                     # 10,000 users, ~1,000 a round, epsilon 2, delta 1e-6
    python benchmarks/privacy_utility.py --quick             # make simulate's setting: 1,000 users, epsilon 8
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

SURFACE_JSON = ROOT / "privacy" / "measured_surface.json"  # privacy.utility_surface.SURFACE
"""The measured surface, which ``python -m privacy.plan`` predicts utility from; its table and plot sit beside the
benchmarks (``benchmarks/results/``)."""
SURFACE_POPULATIONS = (1_000, 10_000, 100_000, 1_000_000)
SURFACE_EPSILONS = (0.5, 1.0, 2.0, 4.0, 8.0)
SURFACE_COHORT = 10_000
"""The most clients a round a surface point plans for: q = min(0.1, 10,000 / N)."""


def _populations(text: str) -> tuple[int, ...]:
    try:
        populations = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a comma-separated list of populations, e.g. 1000,10000; found {text!r}")
    if not populations or min(populations) < 1:
        raise argparse.ArgumentTypeError(f"populations must be >= 1; found {text!r}")
    return populations


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000, help="federation size (default 10,000)")
    parser.add_argument("--eval-users", type=int, default=1_000, help="held-out users scored (default 1,000)")
    parser.add_argument("--points", type=int, default=10, help="latest prediction points per held-out user")
    parser.add_argument("--rounds", type=int, default=20, help="federated rounds (the DP noise is calibrated for them)")
    parser.add_argument("--sample-rate", type=float, default=0.1, help="Poisson sampling rate q of each round")
    parser.add_argument("--epsilon", type=float, default=2.0, help="user-level target epsilon")
    parser.add_argument("--delta", type=float, default=1e-6, help="user-level delta (< 1/users)")
    parser.add_argument("--central-epochs", type=int, default=2, help="epochs of the central reference")
    parser.add_argument("--only-dp", action="store_true", help="train only the DP model (sweeps)")
    parser.add_argument("--mechanism", choices=("central", "distributed", "bandmf"), default="central",
                        help="distributed: also train under privacy=distributed (each device noises its own SecAgg+ "
                             "share; the sum's modular arithmetic computed here, not masked); bandmf: also train "
                             "DP-FTRL with a banded factor (privacy=bandmf: no sampling assumed, bands = 1/q); each "
                             "printed beside the central-noise DP model on the same points (with --surface: bandmf "
                             "rows beside DP-FedAvg's at every population trained for real)")
    parser.add_argument("--stand-for", type=int, default=None, metavar="N",
                        help="the DP model is a noise-cohort simulation of N users at --stand-for-rate: the --users "
                             "simulated users train at --sample-rate, the noise and the ledger are N's (labelled in "
                             "every report)")
    parser.add_argument("--stand-for-rate", type=float, default=None, metavar="Q",
                        help="the sampling rate of the population --stand-for names (default --sample-rate)")
    parser.add_argument("--train-users", type=int, default=None, metavar="N",
                        help="the DP federation is the first N of the --users (scored on the same held-out users)")
    parser.add_argument("--surface", action="store_true",
                        help="measure the privacy-utility surface: populations 1k-1M x epsilon 0.5-8 at delta 1/(10N) "
                             f"(noise-cohort simulations past --users), written to {SURFACE_JSON.relative_to(ROOT)} "
                             "with its table and plot")
    parser.add_argument("--surface-populations", type=_populations, default=SURFACE_POPULATIONS, metavar="N,N",
                        help="the surface's populations (default: 1000,10000,100000,1000000); with fewer, write it "
                             "to --surface-out, not over the committed surface the planner reads")
    parser.add_argument("--surface-out", type=Path, default=None, metavar="DIR",
                        help="write the surface's JSON, table and plot into DIR instead (a trial run)")
    parser.add_argument("--quick", action="store_true",
                        help="make simulate's setting: 1,000 users, 200 held out, 30 rounds, epsilon 8, delta 1e-5")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every model, e.g. privacy.clipping_norm=0.1")
    args = parser.parse_args(argv)
    if args.quick:
        args.users, args.eval_users, args.rounds, args.epsilon, args.delta = 1_000, 200, 30, 8.0, 1e-5
    if args.surface and args.surface_populations != SURFACE_POPULATIONS and args.surface_out is None:
        parser.error("--surface-populations other than the full grid needs --surface-out DIR: the committed surface "
                     "(privacy/measured_surface.json) is the full grid the planner reads")
    return args


OTHER_MECHANISMS = {
    "distributed": {"overrides": ["privacy=distributed", "secagg.enabled=true", "simulation.nodes=0"],
                    "name": "federated DP, devices' noise (distributed)",
                    "accounting": "the minimum survivors' shares; Kairouz-Liu-Steinke + Zhu-Wang RDP"},
    "bandmf": {"overrides": ["privacy=bandmf"], "name": "federated DP-FTRL, banded MF (no sampling)",
               "accounting": "ceil(rounds / bands) unamplified Gaussian releases, RDP"},
}
"""The mechanisms ``--mechanism`` trains beside central-noise DP-FedAvg: their overrides and how they are accounted."""


def surface_points(pool: int, populations: tuple[int, ...] = SURFACE_POPULATIONS) -> list[dict]:
    """The grid: each population N at each epsilon, delta = 1/(10 N), q = min(0.1, 10,000 / N). Populations past the
    ``pool`` of simulated users are noise-cohort simulations on the pool at q = 0.1."""
    points = []
    for n in populations:
        q = min(0.1, SURFACE_COHORT / n)
        for epsilon in SURFACE_EPSILONS:
            points.append({"population": n, "epsilon": epsilon, "delta": 1.0 / (10 * n), "sample_rate": q,
                           "clients_per_round": round(q * n), "simulated_users": min(n, pool),
                           "noise_cohort": n > pool})
    return points


def measure_surface(args, federate, add_model, table, compose_settings, log) -> dict:
    """Train every surface point (and the non-private model on each pool), score them on the same held-out points,
    write the JSON the planner reads, a Markdown table and a plot."""
    from privacy.plan import plan_user_level
    from simulations.federation.noise_cohort import LABEL, NoiseCohort

    rows = []
    for pool in sorted({min(n, args.users) for n in args.surface_populations}):
        settings = compose_settings("config", [f"population.num_users={pool}", f"simulation.rounds={args.rounds}",
                                               f"simulation.sample_rate={args.sample_rate}", "privacy=none",
                                               *args.overrides])
        name = f"non-private, {pool} users"
        model, _ = federate(settings, name, users=pool)
        add_model(name, model)
    for point in surface_points(args.users, args.surface_populations):
        n, epsilon, pool = point["population"], point["epsilon"], point["simulated_users"]
        settings = compose_settings("config", [
            f"population.num_users={pool}", f"simulation.rounds={args.rounds}", f"simulation.sample_rate={args.sample_rate}",
            "privacy=user", f"privacy.target_epsilon={epsilon}", f"privacy.delta={point['delta']}", *args.overrides])
        cohort = NoiseCohort(n, point["sample_rate"]) if point["noise_cohort"] else None
        name = f"DP, N = {n:,}, epsilon {epsilon:g}" + (f" ({LABEL})" if cohort else "")
        model, fed = federate(settings, name, users=pool, cohort=cohort)
        add_model(name, model)
        plan = plan_user_level(population=n, sample_rate=point["sample_rate"], rounds=args.rounds, delta=point["delta"],
                               clipping_norm=settings.privacy.clipping_norm, accountant=settings.privacy.accountant,
                               noise_multiplier=fed.noise_multiplier)
        rows.append({**point, "noise_multiplier": fed.noise_multiplier, "epsilon_spent": fed.epsilon(),
                     "noise_to_signal": plan.noise_to_signal, "top1": table[name]["top1"],
                     "top1_ci": table[name]["top1_ci"], "nll": table[name]["nll"],
                     "nonprivate_top1": table[f"non-private, {pool} users"]["top1"]})
    banded = []
    for row in rows if args.mechanism == "bandmf" else []:  # beside DP-FedAvg wherever the population trains for real
        if row["noise_cohort"]:
            continue
        n, epsilon = row["population"], row["epsilon"]
        settings = compose_settings("config", [
            f"population.num_users={n}", f"simulation.rounds={args.rounds}", f"simulation.sample_rate={args.sample_rate}",
            "privacy=bandmf", f"privacy.target_epsilon={epsilon}", f"privacy.delta={row['delta']}", *args.overrides])
        name = f"DP-FTRL banded MF, N = {n:,}, epsilon {epsilon:g}"
        model, fed = federate(settings, name, users=n)
        add_model(name, model)
        mechanism = fed.mechanism
        banded.append({"population": n, "epsilon": epsilon, "delta": row["delta"], "bands": mechanism.bands,
                       "max_participations": mechanism.max_participations, "noise_multiplier": fed.noise_multiplier,
                       "epsilon_spent": fed.epsilon(), "top1": table[name]["top1"], "top1_ci": table[name]["top1_ci"],
                       "nll": table[name]["nll"], "dpfedavg_top1": row["top1"]})
    rules = {rule: table[rule]["top1"] for rule in ("named_else_recent", "recent_most_frequent", "global_most_popular")}
    result = {"rounds": args.rounds, "simulated_sample_rate": args.sample_rate, "pool_users": args.users,
              "eval_users": args.eval_users, "points_per_user": args.points, "overrides": args.overrides,
              "rules": rules, "surface": rows, "label": LABEL, **({"bandmf": banded} if banded else {})}
    json_path, out = surface_paths(args.surface_out)
    write_surface(result, json_path, out)
    log(f"wrote {json_path} and {out / 'privacy_surface.md'}, {out / 'privacy_surface.png'}")
    print(json.dumps(result))
    return result


def surface_paths(trial_dir: Path | None) -> tuple[Path, Path]:
    """Where the surface goes: the planner's JSON and the benchmarks' results folder, or all into a trial folder."""
    if trial_dir is not None:
        trial_dir.mkdir(parents=True, exist_ok=True)
        return trial_dir / SURFACE_JSON.name, trial_dir
    return SURFACE_JSON, ROOT / "benchmarks" / "results"


def write_surface(result: dict, json_path: Path, out: Path) -> None:
    """The surface as the planner's JSON, a Markdown table and a plot (top-1 against epsilon, one line per N)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path.write_text(json.dumps(result, indent=1) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| N | epsilon | delta | q | clients/round | z | noise/C on the mean | DP top-1 | 95 % CI | NLL | "
             "non-private | simulated as |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["surface"]:
        low, high = r["top1_ci"]
        how = f"{result['label']} on {r['simulated_users']:,} users" if r["noise_cohort"] else "true run"
        lines.append(f"| {r['population']:,} | {r['epsilon']:g} | {r['delta']:.0e} | {r['sample_rate']:g} | "
                     f"{r['clients_per_round']:,} | {r['noise_multiplier']:.3f} | {r['noise_to_signal']:.2e} | "
                     f"{r['top1']:.3f} | {low:.3f}–{high:.3f} | {r['nll']:.3f} | {r['nonprivate_top1']:.3f} | {how} |")
    rules = ", ".join(f"{k} {v:.3f}" for k, v in result["rules"].items())
    lines.append(f"\nRules on the same held-out points: {rules}.")
    if result.get("bandmf"):
        lines += ["", "DP-FTRL with a banded matrix factorisation (privacy=bandmf), measured in the same run on the same "
                  "points: no sampling assumed (one of b groups a round, each device at most k rounds, b apart), "
                  "against DP-FedAvg with amplification by Poisson sampling at the same N, epsilon and delta.", "",
                  "| N | epsilon | delta | bands b | rounds a device joins k | z | banded top-1 | 95 % CI | NLL | "
                  "DP-FedAvg top-1 | difference |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["bandmf"]:
            low, high = r["top1_ci"]
            lines.append(f"| {r['population']:,} | {r['epsilon']:g} | {r['delta']:.0e} | {r['bands']} | "
                         f"{r['max_participations']} | {r['noise_multiplier']:.3f} | {r['top1']:.3f} | {low:.3f}–{high:.3f} | "
                         f"{r['nll']:.3f} | {r['dpfedavg_top1']:.3f} | {r['top1'] - r['dpfedavg_top1']:+.3f} |")
    (out / "privacy_surface.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for n in sorted({r["population"] for r in result["surface"]}):
        part = [r for r in result["surface"] if r["population"] == n]
        label = f"N = {n:,}" + (f" ({result['label']})" if part[0]["noise_cohort"] else "")
        line, = ax.plot([r["epsilon"] for r in part], [r["top1"] for r in part], marker="o", label=label)
        banded = [r for r in result.get("bandmf", []) if r["population"] == n]
        if banded:
            ax.plot([r["epsilon"] for r in banded], [r["top1"] for r in banded], marker="s", linestyle="--",
                    color=line.get_color(), label=f"N = {n:,}, DP-FTRL banded MF (no sampling)")
    ax.axhline(result["rules"]["named_else_recent"], color="grey", linestyle="--", label="named-else-recent rule")
    top = max(r["nonprivate_top1"] for r in result["surface"])
    ax.axhline(top, color="black", linestyle=":", label="non-private federated (best pool)")
    ax.set_xscale("log")
    ax.set_xticks(SURFACE_EPSILONS, [f"{e:g}" for e in SURFACE_EPSILONS])
    ax.minorticks_off()  # else matplotlib labels the log axis' minor ticks "6×10⁻¹"
    ax.set_xlabel("user-level epsilon (delta = 1/(10 N))")
    ax.set_ylabel("held-out top-1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "privacy_surface.png", dpi=120)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    import torch

    from model.network.personalise import fit_personal_bias
    from model.network.networks import PreferenceLSTM
    from simulations.federation.references import central_config, train_central
    from server.server_app import compose_settings
    from simulations.federation.held_out import held_out_examples
    from simulations.federation.inprocess import InProcessFederation
    from simulations.federation.noise_cohort import LABEL as NOISE_COHORT_LABEL
    from simulations.federation.noise_cohort import NoiseCohort
    from simulations.population.population import Population
    from simulations.federation.device_data import device_examples, simulated_data
    from simulations.federation.simulation_settings import population_config
    from simulations.yardstick import model_scores, rule_rows, score_rules, summarise

    started = time.perf_counter()
    log = lambda text: print(f"[{time.perf_counter() - started:5.0f} s] {text}", flush=True)  # noqa: E731
    base = [f"population.num_users={args.users}", f"population.eval_users={args.eval_users}",
            f"simulation.rounds={args.rounds}", f"simulation.sample_rate={args.sample_rate}"]
    dp_settings = compose_settings("config", base + ["privacy=user", f"privacy.target_epsilon={args.epsilon}",
                                                     f"privacy.delta={args.delta}", *args.overrides])
    plain_settings = compose_settings("config", base + ["privacy=none", *args.overrides])
    population_size = args.users + args.eval_users
    population = population_config(dp_settings)  # the federation's users, then the held-out ones
    data = simulated_data(population, window=dp_settings.population.window,
                          eval_fraction=dp_settings.population.client_eval_fraction)
    held_ids = range(args.users, population_size)

    log(f"scoring the rules on {args.eval_users} held-out users ...")
    held = held_out_examples(data, held_ids, args.points)
    cache: dict[int, object] = {}
    max_examples = dp_settings.train.max_examples

    def examples_of(user: int):
        if user not in cache:
            train = device_examples(data, user)[0]
            cache[user] = train.subset(slice(max(0, len(train) - max_examples), len(train))) if max_examples else train
        return cache[user]

    pooled_targets = torch.cat([examples_of(u).targets for u in range(min(args.users, 1_000))])
    global_mode = int(torch.bincount(pooled_targets, minlength=8).argmax())
    points = score_rules(Population(population),
                         held_ids, window=data.window, points_per_user=args.points, global_mode=global_mode)
    if not torch.equal(torch.from_numpy(points.target), held.targets):
        raise RuntimeError("the rules and the models must be scored on the same points; the targets differ.")
    table = rule_rows(points)

    def add_model(name: str, model: PreferenceLSTM) -> None:
        model.eval()
        with torch.no_grad():
            logits = model(held.x, held.lengths)
        correct, nll = model_scores(logits, held.targets)
        table[name] = summarise(correct, points.user, nll)

    torch.manual_seed(dp_settings.seed)
    start_model = PreferenceLSTM(dp_settings.model)
    start = {k: v.detach().numpy().copy() for k, v in start_model.state_dict().items()}
    parameters = sum(p.numel() for p in start_model.parameters())
    add_model("start (untrained: the heuristic prior)", PreferenceLSTM(dp_settings.model))

    def federate(settings, label: str, users: int = args.users, cohort: NoiseCohort | None = None
                 ) -> tuple[PreferenceLSTM, InProcessFederation]:
        stands = f" ({NOISE_COHORT_LABEL} of {cohort.population:,} users at q = {cohort.sample_rate:g})" if cohort else ""
        log(f"{label}: calibrating and training {args.rounds} rounds over {users} users{stands} ...")
        fed = InProcessFederation(settings, start, num_users=users, sample_rate=args.sample_rate,
                                  planned_rounds=args.rounds, stream=0, noise_cohort=cohort)
        for _ in range(args.rounds):
            row = fed.round(examples_of)
            clip = f", C {row['clipping_norm']:.3g}" if row["clipping_norm"] is not None else ""
            log(f"  {label} round {row['round']}: {row['replies']} clients, ~{row['participants']:.0f} trained, loss "
                f"{row['train_loss']:.3f}, unclipped {row['unclipped_fraction']:.2f}{clip}, epsilon {row['epsilon']}")
        model = PreferenceLSTM(settings.model)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in fed.arrays.items()})
        return model, fed

    if args.surface:
        return measure_surface(args, federate, add_model, table, compose_settings, log)
    stand_for = NoiseCohort(args.stand_for, args.stand_for_rate or args.sample_rate) if args.stand_for else None
    dp_model, dp_fed = federate(dp_settings, "federated DP", users=args.train_users or args.users, cohort=stand_for)
    add_model("federated DP" + (f" ({NOISE_COHORT_LABEL}, N = {args.stand_for:,})" if stand_for else ""), dp_model)
    other_privacy = None
    if args.mechanism != "central":
        other = OTHER_MECHANISMS[args.mechanism]
        other_settings = compose_settings("config", base + [*other["overrides"], f"privacy.target_epsilon={args.epsilon}",
                                                            f"privacy.delta={args.delta}", *args.overrides])
        other_model, other_fed = federate(other_settings, other["name"])
        add_model(other["name"], other_model)
        other_privacy = other_fed.privacy_report()
    log("personalising the DP model on each held-out device ...")
    with torch.no_grad():  # the offset is added after the model: the DP model runs once over the held-out points
        personal_logits = dp_model.eval()(held.x, held.lengths)
    for index, uid in enumerate(held_ids):
        train, recent = device_examples(data, uid)
        own = type(held).concat([train, recent], data.window)
        earlier = own.subset(slice(0, max(0, len(own) - args.points)))
        personal_logits[torch.from_numpy(points.user == index)] += fit_personal_bias(dp_model, earlier)
    correct, nll = model_scores(personal_logits, held.targets)
    table["federated DP + personalisation"] = summarise(correct, points.user, nll)

    if not args.only_dp:
        plain_model, _ = federate(plain_settings, "federated non-private")
        add_model("federated non-private", plain_model)
        log(f"central non-private reference: {args.central_epochs} epoch(s) over the pooled training points ...")
        from model.features.examples import Examples
        pooled = Examples.concat([examples_of(u) for u in range(args.users)], data.window)
        cache.clear()  # the pooled copy is all the central model needs (10,000 users: ~4 GB each)
        config = central_config(dp_settings.train, args.central_epochs)
        add_model("central non-private", train_central(pooled, dp_settings.model, config, dp_settings.seed))

    privacy = dp_fed.privacy_report()
    print()
    print(f"Held-out top-1 and NLL: {args.eval_users} users x {args.points} latest points ({len(held)} points); "
          f"model d = {parameters} parameters; 95 % bootstrap intervals over users.")
    print("| model or rule | top-1 | 95 % CI | NLL |")
    print("|---|---|---|---|")
    for name, row in table.items():
        low, high = row["top1_ci"]  # type: ignore[misc]
        nll_text = "—" if row["nll"] is None else f"{row['nll']:.3f}"
        print(f"| {name} | {row['top1']:.3f} | {low:.3f}–{high:.3f} | {nll_text} |")
    print("(told_mood_map uses the simulator's hidden mood map and oracle the hidden taste: references, not rivals.)")
    cohort = privacy.get("noise_cohort")
    q = (f"q = {cohort['sample_rate']:g} over N = {cohort['population']:,} ({cohort['label']}: {cohort['simulated_users']:,} "
         f"users trained at q = {cohort['simulated_sample_rate']:g})") if cohort else f"q = {privacy['sample_rate']}"
    print(f"user-level epsilon {privacy['epsilon']:.3f} at delta {privacy['delta']:g} (z = "
          f"{privacy['noise_multiplier']:.3f}, {q}, C = {privacy['clipping_norm']}, "
          f"{privacy['rounds']} rounds, {privacy['accountant']}); {time.perf_counter() - started:.0f} s in all")
    if other_privacy is not None:
        print(f"{OTHER_MECHANISMS[args.mechanism]['name']}: epsilon {other_privacy['epsilon']:.3f} at delta "
              f"{other_privacy['delta']:g} (noise multiplier {other_privacy['noise_multiplier']:.3f}; "
              f"{OTHER_MECHANISMS[args.mechanism]['accounting']})")
    result = {"users": args.users, f"{args.mechanism}_privacy": other_privacy, "eval_points": len(held),
              "parameters": parameters, "privacy": privacy,
              "overrides": args.overrides, "table": table, "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
