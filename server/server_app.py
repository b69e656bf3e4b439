"""The Flower ServerApp: composes the run's settings from ``conf/`` and runs federated training.

Run config keys (``[tool.flwr.app.config]`` in pyproject.toml, or passed by ``simulations.run``):
``config-name`` (a file in conf/), ``overrides`` (a JSON list of Hydra overrides) and ``output-dir`` (absolute;
empty means ``~/.fedpref/runs/<timestamp>``: the ServerApp's working directory is the SuperLink's, not yours).

``app`` is the product ServerApp (``flwr run``, pyproject.toml): it holds no users' data, so it scores nothing itself
(``deployment.server_eval=false``). The simulation's ServerApp (``simulations.federation.simulation_server_app``) reads
the same run config (``run_settings``) and gives the run its held-out synthetic users.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from server.federation import FederatedRun
from server.preflight import check_can_start
from server.settings import RunSettings, settings_from_config
from validation.config import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

logging.getLogger("flwr").propagate = False  # opacus calls logging.basicConfig(): without this flwr logs twice

app = ServerApp()


def compose_settings(config_name: str, overrides: list[str], schema: type[RunSettings] = RunSettings) -> RunSettings:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides and validate it against ``schema``."""
    if GlobalHydra.instance().is_initialized():  # in-process under simulations.run's @hydra.main: same conf/
        return settings_from_config(compose(config_name=config_name, overrides=overrides), schema)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return settings_from_config(compose(config_name=config_name, overrides=overrides), schema)


def _overrides(raw: object) -> list[str]:
    try:
        value = json.loads(str(raw)) if raw else []
    except json.JSONDecodeError as error:
        raise ConfigError(f"run config 'overrides' must be a JSON list of strings like '[\"privacy=none\"]'; found {raw!r} ({error}).") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"run config 'overrides' must be a JSON list of strings; found {raw!r}.")
    return value


def run_settings(context: Context, schema: type[RunSettings] = RunSettings) -> tuple[RunSettings, Path]:
    """The settings (validated against ``schema``) and the output folder the run config names."""
    config = context.run_config
    settings = compose_settings(str(config.get("config-name", "config")), _overrides(config.get("overrides", "")), schema)
    output_dir = str(config.get("output-dir", "")) or str(Path.home() / ".fedpref" / "runs" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    return settings, Path(output_dir)


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings, output_dir = run_settings(context)
    check_can_start(settings)  # flwr run / deploy: the checks simulations.run makes before Ray starts
    FederatedRun(settings, output_dir).run(grid)
