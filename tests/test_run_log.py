"""run.log in a run's output folder holds the per-round lines the terminal shows (issue 16, item 10)."""

from __future__ import annotations

import io
import logging

from server.federation import Progress
from server.server_app import compose_settings
from simulations.federation.simulation_client_app import app as client_app
from simulations.federation.inprocess import server_task_identity
from simulations.federation.inprocess_grid import InProcessGrid
from simulations.federation.simulation_server_app import simulated_run

TINY = ["population=small", "population.num_users=4", "population.eval_users=2", "population.days=7", "model=causal",
        "model.hidden_size=8", "model.num_layers=1", "model.dropout=0.0", "simulation.rounds=2",
        "simulation.sample_rate=1.0", "simulation.final_eval_clients=0", "simulation.central_baseline_epochs=0",
        "deployment.warm_up_nodes=0", "simulation.nodes=0", "privacy=none", "train.max_examples=8"]


def test_run_log_in_the_output_folder_holds_every_line_the_terminal_shows(tmp_path):
    logging.getLogger("flwr").setLevel(logging.WARNING)
    settings = compose_settings("config", TINY)
    terminal = io.StringIO()
    with server_task_identity():
        simulated_run(settings, tmp_path, progress=Progress(terminal, log_file=tmp_path / "run.log")).run(
            InProcessGrid(client_app, settings.population.num_users))
    logged = (tmp_path / "run.log").read_text(encoding="utf-8").splitlines()
    assert logged == terminal.getvalue().splitlines()
    assert any(line.startswith("round 1") for line in logged) and any(line.startswith("round 2") for line in logged)


def test_a_run_without_its_own_progress_writes_run_log_to_its_output_folder(tmp_path):
    settings = compose_settings("config", TINY)
    with server_task_identity():
        simulated_run(settings, tmp_path).run(InProcessGrid(client_app, settings.population.num_users))
    assert "round 2" in (tmp_path / "run.log").read_text(encoding="utf-8")
