"""What the devices' own noise costs: a SecAgg+ round under privacy=distributed next to one with server-side noise.

One Flower simulation (Ray, the simulation's ServerApp and ClientApp, real SecAgg+) whose ServerApp plays single
rounds over the same ``--devices`` nodes, every node sampled (q = 1), alternating: ``privacy=user`` with SecAgg+ (each
device sends its clipped contribution, Flower quantises it, the server adds the Gaussian noise) and
``privacy=distributed`` (each device rotates, rounds and noises its own share; the server decodes). Round time is
the server's (sampling to checkpoint); the ratio is of the medians over ``--repetitions`` rounds of each, taken in
the same run, after one uncounted round of each (the simulation's workers start slowly). The last line is one JSON object.

    python benchmarks/distributed_round.py                 # 100 devices, 2 rounds of each
    python benchmarks/distributed_round.py --devices 6 --repetitions 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=100, help="SuperNodes, all in every round (default 100)")
    parser.add_argument("--repetitions", type=int, default=2, help="rounds of each mode (default 2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    from flwr.app import Context, RecordDict
    from flwr.serverapp import ServerApp
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from server.server_app import compose_settings
    from simulations.federation.simulation_client_app import app as client_app
    from simulations.federation.simulation_server_app import simulated_run

    base = [f"population.num_users={args.devices}", "population.eval_users=0", "population.days=10",
            "population=small", "simulation.rounds=1", "simulation.sample_rate=1.0", "simulation.final_eval_clients=0",
            "simulation.central_baseline_epochs=0", "simulation.nodes=0", "secagg.enabled=true",
            "deployment.server_eval=false", "deployment.warm_up_nodes=0", "privacy.target_epsilon=8",
            f"privacy.delta={0.1 / args.devices}"]
    modes = {"server noise (privacy=user)": compose_settings("config", base + ["privacy=user"]),
             "device noise (privacy=distributed)": compose_settings("config", base + ["privacy=distributed"])}
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    started = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="distributed-round-"))
    app = ServerApp()

    @app.main()
    def _main(grid, context):
        for repetition in range(args.repetitions + 1):  # the first of each warms the workers up and is not counted
            for name, settings in modes.items():
                metrics = simulated_run(settings, out / f"{repetition}-{name[:6]}").run(grid)
                row = metrics["rounds"][-1]
                if repetition == 0:
                    continue
                seconds[name].append(row["seconds"])
                print(f"[{time.perf_counter() - started:5.0f} s] {name}, round {repetition + 1}: {row['seconds']:.1f} s, "
                      f"{row['replies']} contributions, epsilon {metrics['privacy']['user_level']['epsilon']:.3f}",
                      flush=True)

    _run_simulation(
        server_app=app, client_app=client_app, num_supernodes=args.devices, backend_name="ray",
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"include_dashboard": False}},
        server_app_context=Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
    )
    central, distributed = (statistics.median(seconds[name]) for name in modes)
    print(f"{args.devices} devices, median of {args.repetitions} round(s): server noise {central:.1f} s, device noise "
          f"{distributed:.1f} s, ratio {distributed / central:.2f}")
    result = {"devices": args.devices, "repetitions": args.repetitions, "server_noise_s": central,
              "device_noise_s": distributed, "ratio": distributed / central,
              "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
