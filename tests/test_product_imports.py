"""The product path never contains the synthetic-user generator: nothing under client/ or server/ imports simulations/.

Synthetic users, their held-out evaluation, seed-logs and the attacks live in ``simulations/`` and are plugged into the
product's ClientApp and ServerApp by the simulation (``simulations.federation.simulation_client_app``,
``simulations.federation.simulation_server_app``). Checked statically by ``tests/test_layers.py`` (every import, in
functions too, points down the layers, and simulations/ is the top one) and here by loading the product apps in a fresh
interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

FORBIDDEN = "simulations"


@pytest.mark.slow  # a fresh interpreter importing both apps (seconds); tests/test_layers.py checks it statically
def test_loading_the_product_apps_loads_no_simulations_module():
    code = ("import sys, client.client_app, server.server_app, launch.launch_cli; "
            f"print(sorted(m for m in sys.modules if m == {FORBIDDEN!r} or m.startswith({FORBIDDEN + '.'!r})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
