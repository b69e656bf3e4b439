"""The tree's layers: every import (at the top of a module or inside a function) points down, never up.

Order, bottom first: storage and validation, privacy, model (log < features < per_sample < network < device),
generation, protocol, then client and server side by side (they meet only in protocol), then studio (the device
room, over the client's log store), then launch (the operator's tool that starts both), then simulations. Neither the product (client, server) nor any lower layer
imports simulations. A violation names the file, the line and the module it imports.

In tests/, no test module imports another: what they share lives in tests/helpers.py (builders) or
tests/conftest.py (fixtures).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

LAYERS = [("storage", "validation"), "privacy", "model.log", "model.features", "model.per_sample", "model.network", "model.device",
          "generation", "protocol", ("client", "server"), "studio", "launch", "simulations"]


def _rank(module: str) -> int | None:
    """The layer of a dotted module name of this project; None for third-party modules."""
    for rank, layer in enumerate(LAYERS):
        for name in (layer if isinstance(layer, tuple) else (layer,)):
            if module == name or module.startswith(name + "."):
                return rank
    return None


def _layer_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``: ``import a.b``, ``from a.b import c`` (anywhere, functions
    included), and ``importlib.import_module("a.b")`` or ``__import__("a.b")`` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _imports(path: Path) -> list[tuple[int, str]]:
    return imported_modules(path.read_text())


SOURCES = sorted(p for top in ("storage", "validation", "privacy", "model", "generation", "protocol", "client", "server", "studio", "launch", "simulations")
                 for p in (ROOT / top).rglob("*.py") if p.parent != ROOT / "model")  # model/ itself: sub-packages only


def test_the_walk_finds_every_form_of_import() -> None:
    for source in ("import simulations", "import simulations.population.population as p",
                   "from simulations.population.world import World", "def f():\n    from simulations import attacks\n",
                   "importlib.import_module('simulations.seed_logs')", "__import__('simulations.population.world')"):
        assert [m for _, m in imported_modules(source) if _rank(m) == _rank("simulations")], source
    assert not [m for _, m in imported_modules("import simulationsx\nfrom . import simulations") if _rank(m) is not None]


def test_the_layers_cover_every_package() -> None:
    unplaced = sorted({_layer_of(p) for p in SOURCES if _rank(_layer_of(p)) is None})
    assert not unplaced, f"modules in no layer (add their package to LAYERS): {unplaced}"


def test_imports_point_down() -> None:
    upward = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in SOURCES
              for line, module in _imports(path)
              if (rank := _rank(module)) is not None and rank > _rank(_layer_of(path))]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_client_and_server_meet_only_in_protocol() -> None:
    crossing = []
    for path in SOURCES:
        top = path.relative_to(ROOT).parts[0]
        if top in ("client", "server"):
            other = "server" if top == "client" else "client"
            crossing += [f"{path.relative_to(ROOT)}:{line} imports {module}" for line, module in _imports(path)
                         if module == other or module.startswith(other + ".")]
    assert not crossing, "client and server import each other:\n" + "\n".join(crossing)


def test_the_device_room_imports_no_simulations_and_nothing_of_the_server() -> None:
    room = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in SOURCES
            if path.relative_to(ROOT).parts[0] == "studio" for line, module in _imports(path)
            if module.split(".")[0] in ("simulations", "server", "launch")]
    assert [p for p in SOURCES if p.relative_to(ROOT).parts[0] == "studio"], "no studio/ modules found"
    assert not room, "the device room imports:\n" + "\n".join(room)


def imported_test_modules(source: str) -> list[tuple[int, str]]:
    """(line, name) of every import in ``source`` of a test module: ``tests.test_x``, ``test_x`` (tests/ is on
    ``sys.path`` under pytest), ``from tests import test_x``, ``from .test_x import y``, ``from . import test_x``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            names = [base] + ([f"{base}.{a.name}".lstrip(".") for a in node.names] if base in ("", "tests") else [])
        else:
            continue
        found += [(node.lineno, name) for name in names
                  if name.split(".")[-1].startswith("test_") and name.split(".")[:-1] in ([], ["tests"])]
    return found


def test_the_walk_finds_every_import_of_a_test_module() -> None:
    for source in ("from tests.test_client_app import _context", "import tests.test_federated_run",
                   "from test_hostile_inputs import FAST", "from .test_x import y", "from . import test_x",
                   "from tests import test_x", "def f():\n    from tests.test_x import y\n"):
        assert imported_test_modules(source), source
    assert not imported_test_modules("from tests.helpers import announced\nfrom tests.conftest import ROOT\n"
                                     "import pytest\nfrom tests import helpers\nfrom torch.testing import test_x")


def test_no_test_module_imports_another() -> None:
    """What tests share lives in tests/helpers.py (builders) or tests/conftest.py (fixtures). A test module imported
    by another runs its module-level set-up a second time (pytest imports it under its own name), ties one test
    file's private helpers to another's, and a slow module's helpers pull its set-up into fast tests."""
    found = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in sorted((ROOT / "tests").glob("test_*.py"))
             for line, name in imported_test_modules(path.read_text())]
    assert not found, "test modules import test modules (share through tests/helpers.py):\n" + "\n".join(found)
