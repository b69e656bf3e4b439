"""Federated simulation entry point: ``python -m simulations.run [hydra overrides]``.

Composes ``conf/config.yaml`` with your overrides and validates it before anything starts (schema, then
``simulations.federation.simulation_settings.check_simulation_can_start``: checkpoint file, population, privacy budget,
model size against memory), exiting 2 with the reason; with ``privacy.plan=true`` it prints the run's privacy plan
(noise multiplier, ε, noise per round: ``privacy.plan``) and exits 0; then runs the simulation's ServerApp and ClientApp
(``simulations.federation.simulation_server_app``, ``simulations.federation.simulation_client_app``: the product's apps
with the synthetic population, its held-out users and the attack mod plugged in) in Flower's simulation engine (Ray,
``simulation.num_cpus_per_client`` CPUs per worker) with ``simulation.nodes`` SuperNode slots playing the synthetic
users the server samples (or one SuperNode per user with ``simulation.nodes=0``). Everything the run writes
(metrics.json, checkpoint.pt, run.log, accuracy.png, epsilon.png) goes to Hydra's output directory;
``hydra.run.dir=DIR`` places it. Heavy imports (torch, Flower) wait until a config is composed, so ``--help`` is quick.
Examples::

    python -m simulations.run privacy=both privacy.target_epsilon=4 simulation.rounds=20
    python -m simulations.run -m privacy.target_epsilon=1,2,4,8      # a privacy-utility sweep
    python -m simulations.run population=10k privacy.target_epsilon=2 privacy.plan=true   # its plan, nothing runs
    python -m simulations.run resume=true checkpoint=outputs/.../checkpoint.pt simulation.rounds=40
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# One math thread per process (before torch is imported; inherited by the baselines' process): the cores belong to
# Ray's workers, one per core, and a second thread in this process only contends with them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

if TYPE_CHECKING:
    from server.settings import RunSettings

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
QUIET_WARNINGS = (
    # Opacus, whenever ε is computed at much noise or few steps: a note on its alphas, not a problem of the run.
    ("Optimal order is the largest alpha", UserWarning),
    # Ray at start-up, about GPU visibility in a future version; this project runs on CPU.
    ("Tip: In future versions of Ray", FutureWarning),
)
_task_started = False
"""Set once Hydra has composed the config and called ``main``: an exit code 1 before that is Hydra's config error."""


def quiet_known_warnings() -> None:
    """Hide ``QUIET_WARNINGS`` here and in the Ray workers started from this process (they inherit the environment)."""
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    # -W syntax is colon-separated and matches the message's start: the text before any colon is enough.
    extra = ",".join(f"ignore:{message.split(':')[0]}:{category.__name__}" for message, category in QUIET_WARNINGS)
    current = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = f"{current},{extra}" if current else extra


def run_federated_simulation(settings_overrides: list[str], settings: RunSettings, output_dir: Path, config_name: str = "config") -> dict:
    """Run the simulation's ServerApp and ClientApp in Flower's simulation engine; returns the metrics the server wrote."""
    from flwr.app import Context, RecordDict
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from simulations.federation.simulation_client_app import app as client_app
    from simulations.federation.simulation_server_app import app as server_app

    quiet_known_warnings()

    logging.getLogger("flwr").setLevel(logging.WARNING)  # our own progress lines say what happens
    run_config = {"config-name": config_name, "overrides": json.dumps(settings_overrides), "output-dir": str(output_dir)}
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    backend = {
        "client_resources": {"num_cpus": settings.simulation.num_cpus_per_client, "num_gpus": 0.0},
        "init_args": {"include_dashboard": False, "log_to_driver": True},
    }
    # flwr 1.42 has no public in-process API that passes a run config; this is the function `flwr run` ends in.
    _run_simulation(
        server_app=server_app, client_app=client_app,
        num_supernodes=settings.simulated_nodes,
        backend_name="ray", backend_config=backend, server_app_context=context,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
    )
    return json.loads((output_dir / "metrics.json").read_text())


def print_plan(settings: RunSettings) -> None:
    """``privacy.plan=true``: the privacy plan of this config (``server.run_start.privacy_plan``: the run's own
    calibration, over its N = population.num_users simulated users), printed before anything starts."""
    from server.run_start import privacy_plan

    quiet_known_warnings()
    p, sim = settings.privacy, settings.simulation
    print(f"privacy.plan=true: the plan of this config (population.num_users={settings.population.num_users}, "
          f"simulation.sample_rate={sim.sample_rate}, simulation.rounds={sim.rounds}, privacy={p.mode}); nothing ran.")
    if p.distributed:
        from privacy.distributed_release import plan_lines
        from server.preflight import distributed_plan

        shares = distributed_plan(settings, settings.population.num_users)
        print("\n".join(plan_lines(shares, sample_rate=sim.sample_rate, rounds=sim.rounds, delta=p.delta)))
        return
    plan = privacy_plan(settings, settings.population.num_users)
    if plan is None:
        print(f"privacy.mode={p.mode!r} has no user-level mechanism to plan"
              + (" (record-level DP-SGD: each device spends its own privacy.record.target_epsilon)." if p.record_level
                 else "."))
        return
    print("\n".join(plan.lines()))
    for q, _ in plan.also:
        print(f"the release at q = {q:.4g}: the devices' final evaluation (q = min(1, simulation.final_eval_clients="
              f"{sim.final_eval_clients} / N)), accounted in the run's ledger at the same z.")
    if p.clipping == "adaptive":
        print("privacy.clipping=adaptive: C above is round 1's; it then follows the update norms (z and ε do not change).")


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    global _task_started
    _task_started = True
    for noisy in ("alembic", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from simulations.federation.simulation_settings import check_simulation_can_start, simulated_settings

    try:
        settings = simulated_settings(cfg)
        check_simulation_can_start(settings, planning=settings.privacy.plan)
    except ValueError as error:  # ConfigError, PrivacyConfigError
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if settings.privacy.plan:
        print_plan(settings)
        return
    output_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    overrides = list(HydraConfig.get().overrides.task)
    run_federated_simulation(overrides, settings, output_dir)
    line = f"outputs: {output_dir} (metrics.json, checkpoint.pt, run.log, accuracy.png, epsilon.png)"
    print(line)
    with open(output_dir / "run.log", "a", encoding="utf-8") as log:  # after the lines the ServerApp wrote
        log.write(line + "\n")


def cli() -> None:
    """``main`` with Hydra's own config errors (an unknown key, a missing group option) as exit code 2, not 1."""
    try:
        main()
    except SystemExit as stop:
        if stop.code == 1 and not _task_started:
            raise SystemExit(2) from None
        raise


if __name__ == "__main__":
    cli()
