"""The simulation's ServerApp: the product's federated run, given the synthetic population and its held-out users.

``simulated_run`` builds ``server.federation.FederatedRun`` with the two things only a simulation has: the
description of the synthetic population its nodes play (sent in every message, ``simulations.federation.device_data``)
and the held-out synthetic users the server scores on (``simulations.federation.held_out``). ``app`` reads the same run
config as the product ServerApp (``server.server_app.run_settings``) with the simulation's schema; Flower's
simulation engine runs it with ``simulations.federation.simulation_client_app`` (``simulations.run``).
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import FederatedRun, Progress, data_instructions
from server.server_app import run_settings
from server.settings import RunSettings
from simulations.federation.device_data import population_items
from simulations.federation.held_out import SyntheticHeldOut
from simulations.federation.simulation_settings import (SimulatedRunSettings, check_simulation_can_start,
                                                         population_config)


def simulated_run(settings: RunSettings, output_dir: Path, progress: Progress | None = None) -> FederatedRun:
    """A federated run over the synthetic population of ``settings`` (its users ``0 .. num_users - 1`` train, the next
    ``eval_users`` are held out)."""
    population = population_items(population_config(settings))
    held_out = SyntheticHeldOut(settings, data_instructions(settings, population))
    return FederatedRun(settings, output_dir, progress, held_out=held_out, population=population)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings, output_dir = run_settings(context, SimulatedRunSettings)
    check_simulation_can_start(settings)  # the checks simulations.run makes before Ray starts
    simulated_run(settings, output_dir).run(grid)
