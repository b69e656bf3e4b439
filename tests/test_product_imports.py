"""The product path never contains the synthetic-user generator: nothing under client/ or server/ imports simulations/.

Synthetic users, their held-out evaluation, seed-logs and the attacks live in ``simulations/`` and are plugged into
the product's ClientApp and ServerApp by the simulation (``simulations.federation.client_app``,
``simulations.federation.server_app``). Checked twice: statically, on the syntax tree of every module (an import
hidden in a function counts too), and by loading the product apps in a fresh interpreter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PRODUCT_PACKAGES = ("client", "server")
FORBIDDEN = "simulations"


def imported_modules(source: str) -> list[str]:
    """Every module ``source`` imports: ``import a.b``, ``from a.b import c``, and ``importlib.import_module("a.b")``
    or ``__import__("a.b")`` with a literal name."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def imports_forbidden(source: str) -> list[str]:
    return [name for name in imported_modules(source) if name == FORBIDDEN or name.startswith(FORBIDDEN + ".")]


def test_no_module_under_client_or_server_imports_simulations():
    files = [path for package in PRODUCT_PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20  # the walk found the packages
    offenders = {str(path.relative_to(ROOT)): bad for path in files if (bad := imports_forbidden(path.read_text()))}
    assert not offenders, f"product modules import {FORBIDDEN}/: {offenders}"


def test_the_check_catches_every_form_of_import():
    for source in ("import simulations", "import simulations.population.population as p", "from simulations.population.world import World",
                   "def f():\n    from simulations import attacks\n", "importlib.import_module('simulations.seed_logs')",
                   "__import__('simulations.population.world')"):
        assert imports_forbidden(source), source
    assert not imports_forbidden("import simulationsx\nfrom protocol.records import slot_users\nfrom . import simulations")


def test_loading_the_product_apps_loads_no_simulations_module():
    code = ("import sys, client.client_app, server.server_app, launch.cli; "
            f"print(sorted(m for m in sys.modules if m == {FORBIDDEN!r} or m.startswith({FORBIDDEN + '.'!r})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
