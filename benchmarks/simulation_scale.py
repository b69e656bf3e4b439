"""How close a federated round through Flower's simulation engine comes to the compute floor.

For each point (users in the population, clients expected per round) this measures, in one run:

(a) the sequential floor: the clients of round 1 (the same Poisson sample the server draws) trained back to back in
    this process with no Flower (``local_update`` user by user, data generation included, one thread) before the
    real rounds, and a quarter as many other users after them; the faster per-client time (noise only slows a
    measurement down), times the mean clients per measured round, divided by the number of cores;
(b) the batched floor: the same, with all of those clients trained as one batched computation
    (``local_updates``, ``model.network.batched_training``), data generation included;
(b') the parallel batched floor: (b) with every core busy at once, one process per core training its share of the
    clients, started together: the cores share memory bandwidth and caches, which (b) divided by the cores does
    not see, so (c)/(b') is what Flower and the server themselves cost;
(c) the real rounds: the ServerApp and ClientApp in Flower's simulation engine (Ray, one CPU per worker), round
    time as the server measures it (sampling to checkpoint), averaged over the measured rounds;

and prints wall time per round, client updates per second, peak memory (RSS of this process and all its
descendants: Ray's processes included) and the ratios (c)/(a), (c)/(b) and (c)/(b'). ``--quick`` runs 1,000 users / 100 per
round only. The full run adds 10,000 / 1,000 and 100,000 / 1,000 (memory must not grow with the population at the
same clients per round). ``--points 100000:10000`` measures the points named instead. The last line is one JSON object:
the 10,000 / 1,000 point (the quick point with ``--quick``; the second of ``--points``, else its only one).

    python benchmarks/simulation_scale.py [--quick] [--rounds 2] [--nodes 4] [--users-per-message K]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

CORES = os.cpu_count() or 1  # Ray's CPUs on this machine: the floor is the compute spread over all of them


def _descendants_rss_mb(root_pid: int) -> float:
    """RSS of ``root_pid`` and every process below it, from /proc (no third-party packages)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields.get("PPid", "0").strip())
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) if "VmRSS" in fields else 0
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(rss.get(p, 0) for p in tree) / 1024.0


class PeakMemory:
    """Samples the process tree's RSS every 0.5 s in a background thread."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _descendants_rss_mb(os.getpid()))
            self._stop.wait(0.5)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _overrides(users: int, per_round: int, rounds: int, nodes: int, cpus_per_client: float,
               users_per_message: int | None) -> list[str]:
    per_message = [] if users_per_message is None else [f"simulation.users_per_message={users_per_message}"]
    return per_message + [
        f"population.num_users={users}", "population.eval_users=20", f"simulation.sample_rate={per_round / users}",
        f"simulation.rounds={rounds}", f"simulation.nodes={nodes}", "simulation.final_eval_clients=0",
        # The baselines (computed beside the rounds) are not measured here: pool few users' logs for them.
        "simulation.central_baseline_epochs=0", "simulation.baseline_users=20", "simulation.round_timeout_s=1200",
        "privacy.delta=1e-6",
        f"simulation.num_cpus_per_client={cpus_per_client}",
    ]


def measure_floor(settings, users: list[int], *, batched: bool, start_together=None) -> float:
    """Seconds of local work per client: ``users`` trained in this process, one thread, their data generated first
    (nothing cached); one after another (``local_update``) or batched (``local_updates``). With ``start_together``
    (a multiprocessing barrier) the clock starts when every process sharing it is ready."""
    from client.device_ledger import DeviceLedger
    from client.local_update import local_update, local_updates
    from model.network.batched_training import USERS_PER_BATCH
    from model.network.networks import PreferenceLSTM
    from server.round import train_instructions
    from simulations.federation import device_data
    from simulations.federation.simulation_server_app import simulated_run

    torch.set_num_threads(1)
    run = simulated_run(settings, Path(tempfile.mkdtemp(prefix="floor-")))
    instructions = train_instructions(settings, 1, seed=settings.seed, data=run.data, device_dir=run.device_dir)
    torch.manual_seed(settings.seed)
    arrays = {k: v.detach().numpy().copy() for k, v in PreferenceLSTM(settings.model).state_dict().items()}
    device_data._encoded_logs.clear()  # each floor generates its users' data itself
    if start_together is not None:
        start_together.wait()
    started = time.perf_counter()
    if batched:  # as many users at a time as one batched computation takes: their data is all in memory
        for first in range(0, len(users), USERS_PER_BATCH):
            part = users[first : first + USERS_PER_BATCH]
            examples = [device_data.device_examples(instructions.data, user)[0] for user in part]
            local_updates(arrays, instructions, examples, [DeviceLedger(None) for _ in part], part, simulated=True)
    else:
        for user in users:
            examples, _ = device_data.device_examples(instructions.data, user)
            local_update(arrays, instructions, examples, DeviceLedger(None), user, simulated=True)
    return (time.perf_counter() - started) / len(users)


def _floor_share(settings, users: list[int], start_together, seconds) -> None:
    seconds.put(measure_floor(settings, users, batched=True, start_together=start_together) * len(users))


def measure_parallel_floor(settings, users: list[int]) -> float:
    """Seconds per client of the whole machine: ``users`` split over one process per core, each training its share
    batched (``measure_floor``), their clocks started together; the slowest share decides."""
    context = multiprocessing.get_context("spawn")
    start_together, seconds = context.Barrier(CORES), context.Queue()
    shares = [users[core::CORES] for core in range(CORES)]
    processes = [context.Process(target=_floor_share, args=(settings, share, start_together, seconds))
                 for share in shares]
    for process in processes:
        process.start()
    slowest = max(seconds.get() for _ in processes)
    for process in processes:
        process.join()
    return slowest / len(users)


def round_one_sample(settings) -> list[int]:
    """The users the server samples in round 1 (same generator, same seed)."""
    rng = np.random.default_rng([settings.seed, 0])
    users = settings.population.num_users
    return [int(u) for u in np.nonzero(rng.random(users) < settings.simulation.sample_rate)[0]]


def updates_of(metrics: dict) -> float:
    """Mean client updates per measured round."""
    return sum(r["replies"] for r in metrics["rounds"]) / len(metrics["rounds"])


def measure_point(users: int, per_round: int, rounds: int, nodes: int, cpus_per_client: float = 1.0,
                  users_per_message: int | None = None) -> dict:
    from server.server_app import compose_settings
    from simulations.run import run_federated_simulation

    overrides = _overrides(users, per_round, rounds, nodes, cpus_per_client, users_per_message)
    settings = compose_settings("config", overrides)
    sampled = round_one_sample(settings)
    before = {batched: measure_floor(settings, sampled, batched=batched) for batched in (False, True)}
    parallel_before = measure_parallel_floor(settings, sampled)
    output = Path(tempfile.mkdtemp(prefix="scale-"))
    with PeakMemory() as memory:
        metrics = run_federated_simulation(overrides, settings, output)
    taken = set(sampled)
    others = [u for u in range(users) if u not in taken][: max(1, len(sampled) // 4)]  # uncached users' data
    after = {batched: measure_floor(settings, others, batched=batched) for batched in (False, True)}
    parallel_s = min(parallel_before, measure_parallel_floor(settings, others)) * updates_of(metrics)
    measured = metrics["rounds"]
    round_s = sum(r["seconds"] for r in measured) / len(measured)
    updates = updates_of(metrics)
    # Noise on a shared machine only slows a measurement down: the faster of the two is the floor's estimate.
    floor_s, batched_floor_s = (min(before[b], after[b]) * updates / CORES for b in (False, True))
    first = measured[0]
    return {
        "users": users, "clients_per_round": per_round, "nodes": nodes, "users_per_message": settings.simulation.users_per_message,
        "round_s": round_s, "floor_s": floor_s, "batched_floor_s": batched_floor_s,
        "ratio": round_s / floor_s if floor_s else float("inf"),
        "ratio_batched": round_s / batched_floor_s if batched_floor_s else float("inf"),
        "parallel_floor_s": parallel_s, "ratio_parallel": round_s / parallel_s if parallel_s else float("inf"),
        "updates_per_s": updates / round_s,
        "peak_rss_mb": memory.peak_mb, "round1_clients": first["replies"], "round1_sampled": len(sampled),
        "floor_ms_per_client": [round(1000 * before[False], 1), round(1000 * after[False], 1)],
        "batched_floor_ms_per_client": [round(1000 * before[True], 1), round(1000 * after[True], 1)],
    }


def measure_in_fresh_process(users: int, per_round: int, args: argparse.Namespace) -> dict:
    """One point in its own Python process, so neither its memory nor its timing carries over from another point."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "point.json"
        subprocess.run([sys.executable, __file__, "--point", f"{users}:{per_round}", "--result", str(result),
                        "--rounds", str(args.rounds), "--nodes", str(args.nodes),
                        "--cpus-per-client", str(args.cpus_per_client),
                        *([] if args.users_per_message is None else ["--users-per-message", str(args.users_per_message)])],
                       check=True)
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 1,000 users / 100 per round")
    parser.add_argument("--tiny", action="store_true",
                        help="only 40 users / 8 per round, one round: a smoke test of the machinery, not a measurement")
    parser.add_argument("--rounds", type=int, default=2, help="rounds measured per point (default 2)")
    parser.add_argument("--nodes", type=int, default=4,
                        help="simulation.nodes: node slots playing the sampled users (default 4, as conf/; 0 = one node per user)")
    parser.add_argument("--cpus-per-client", type=float, default=1.0,
                        help="simulation.num_cpus_per_client: Ray starts cores / this many workers (default 1)")
    parser.add_argument("--users-per-message", type=int, default=None,
                        help="simulation.users_per_message: at most this many sampled users per message to a slot (default: conf/'s)")
    parser.add_argument("--points", default=None, metavar="U:K,...",
                        help="measure these points instead, users:clients per round, e.g. 100000:10000")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # USERS:PER_ROUND, run by the parent in a fresh process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.point:
        users, per_round = map(int, args.point.split(":"))
        Path(args.result).write_text(json.dumps(measure_point(users, per_round, args.rounds, args.nodes, args.cpus_per_client,
                                                                args.users_per_message)))
        return
    if args.tiny:
        args.rounds = 1
    points = [(40, 8)] if args.tiny else [(1_000, 100)] if args.quick else [(1_000, 100), (10_000, 1_000), (100_000, 1_000)]
    if args.points:
        points = [tuple(map(int, point.split(":"))) for point in args.points.split(",")]
    results = []
    for users, per_round in points:
        print(f"measuring {users:,} users / {per_round:,} per round (a fresh process) ...", flush=True)
        results.append(measure_in_fresh_process(users, per_round, args))
    print(f"\n{'users':>8} {'per round':>9} {'nodes':>6} {'per msg':>7} {'round s':>8} {'seq floor':>9} {'ratio':>6} "
          f"{'batched floor':>13} {'ratio':>6} {'parallel floor':>14} {'ratio':>6} {'updates/s':>9} {'peak RSS MB':>11}")
    for r in results:
        print(f"{r['users']:>8,} {r['clients_per_round']:>9,} {r['nodes']:>6,} {r['users_per_message']:>7} {r['round_s']:>8.2f} "
              f"{r['floor_s']:>9.2f} {r['ratio']:>6.2f} {r['batched_floor_s']:>13.2f} {r['ratio_batched']:>6.2f} "
              f"{r['parallel_floor_s']:>14.2f} {r['ratio_parallel']:>6.2f} "
              f"{r['updates_per_s']:>9.1f} {r['peak_rss_mb']:>11.0f}")
    last = results[1] if len(results) > 1 else results[0]
    keys = ("users", "clients_per_round", "users_per_message", "round_s", "floor_s", "batched_floor_s", "ratio",
            "ratio_batched", "parallel_floor_s", "ratio_parallel", "updates_per_s", "peak_rss_mb")
    print(json.dumps({k: round(last[k], 3) if isinstance(last[k], float) else last[k] for k in keys}))


if __name__ == "__main__":
    main()
