"""The tree's layers: every import (at the top of a module or inside a function) points down, never up.

Order, bottom first: storage and validation, privacy, model (log < features < per_sample < network < device),
generation, protocol, then client and server side by side (they meet only in protocol), then studio (the device
room, over the client's log store), then launch (the operator's tool that starts both), then simulations, then
benchmarks (which may use anything), then tests. Neither the product (client, server) nor any lower layer imports
simulations, and nothing imports benchmarks or tests. A violation names the file, the line and the module it imports.

A module reaches another not only by ``import``: ``importlib.import_module("a.b")``, a child process started as
``[sys.executable, "-m", "a.b", ...]`` (of a package: its ``a/b/__main__.py``) and an entry point ``"a.b:function"``
run that module's code too, so each counts as an import of it. No chain of imports leads from a module back to itself (``if TYPE_CHECKING:`` imports,
which never run, aside).

In tests/, no test module imports another or tests/conftest.py: what they share lives in tests/helpers.py
(builders and constants such as ROOT) or tests/conftest.py (fixtures, which pytest hands to the tests).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

LAYERS = [("storage", "validation"), "privacy", "model.log", "model.features", "model.per_sample", "model.network",
          "model.device", "generation", "protocol", ("client", "server"), "studio", "launch", "simulations",
          "benchmarks", "tests"]
PACKAGES = ("storage", "validation", "privacy", "model", "generation", "protocol", "client", "server", "studio",
            "launch", "simulations", "benchmarks")
"""The folders whose modules the test reads (tests/ is the top layer: only what imports it is checked)."""


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


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
                                         or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST):
    """Every node of ``tree`` but the body of ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    for child in ast.iter_child_nodes(tree):
        yield child
        if _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _nodes(other)
        else:
            yield from _nodes(child)


def run_as_main(module: str) -> str:
    """The module ``python -m module`` runs: ``module.__main__`` for a package of this project that has one."""
    return f"{module}.__main__" if (ROOT.joinpath(*module.split(".")) / "__main__.py").is_file() else module


def imported_modules(source: str, *, type_checking: bool = True) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``: ``import a.b``, ``from a.b import c`` (anywhere, functions
    included), ``importlib.import_module("a.b")`` or ``__import__("a.b")`` with a literal name, a child process
    ``[..., "-m", "a.b", ...]`` (a list, a tuple or a call's arguments; a package's ``__main__``) and an entry point
    ``"a.b:name"`` naming a module of this project. ``type_checking=False`` leaves out the imports under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(source)
    found = []
    for node in (ast.walk(tree) if type_checking else _nodes(tree)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
        if isinstance(node, (ast.List, ast.Tuple, ast.Call)):  # python -m a.b: the child process imports a.b
            items = node.args if isinstance(node, ast.Call) else node.elts
            found += [(node.lineno, run_as_main(module.value)) for flag, module in zip(items, items[1:])
                      if isinstance(flag, ast.Constant) and flag.value == "-m"
                      and isinstance(module, ast.Constant) and isinstance(module.value, str)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.count(":") == 1:
            module, name = node.value.split(":")  # "a.b:name", an entry point imported by name
            if "." in module and name.isidentifier() and _rank(module) is not None \
                    and all(part.isidentifier() for part in module.split(".")):
                found.append((node.lineno, module))
    return found


def _imports(path: Path) -> list[tuple[int, str]]:
    return imported_modules(path.read_text())


SOURCES = sorted(p for top in PACKAGES for p in (ROOT / top).rglob("*.py")
                 if p.parent != ROOT / "model")  # model/ itself: sub-packages only


def test_the_walk_finds_every_form_of_import() -> None:
    for source in ("import simulations", "import simulations.population.population as p",
                   "from simulations.population.world import World", "def f():\n    from simulations import attacks\n",
                   "importlib.import_module('simulations.seed_logs')", "__import__('simulations.population.world')",
                   "subprocess.run([sys.executable, '-m', 'simulations.seed_logs'])",
                   "argv = (sys.executable, '-m', 'simulations.run')", "func = 'simulations.run:main'"):
        assert [m for _, m in imported_modules(source) if _rank(m) == _rank("simulations")], source
    assert not [m for _, m in imported_modules("import simulationsx\nfrom . import simulations") if _rank(m) is not None]


def test_the_layers_cover_every_package() -> None:
    unplaced = sorted({_layer_of(p) for p in SOURCES if _rank(_layer_of(p)) is None})
    assert not unplaced, f"modules in no layer (add their package to LAYERS): {unplaced}"
    unread = sorted(top for top in PACKAGES if not any(p.relative_to(ROOT).parts[0] == top for p in SOURCES))
    assert not unread, f"folders with no module read: {unread}"
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.glob("*.py"))} - {"tests"}
    assert folders <= set(PACKAGES), f"folders of Python code the test does not read: {sorted(folders - set(PACKAGES))}"


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


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of SOURCES it imports (``from a import b`` imports the module ``a.b`` if there is one),
    leaving out imports under ``if TYPE_CHECKING:``."""
    modules = {_layer_of(path) for path in SOURCES}

    def known(name: str) -> str | None:  # the module a dotted name lies in: a.b.Class -> a.b
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for path in SOURCES:
        source = path.read_text()
        names = [module for _, module in imported_modules(source, type_checking=False)]
        names += [f"{node.module}.{alias.name}" for node in _nodes(ast.parse(source))
                  if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module for alias in node.names]
        graph[_layer_of(path)] = {target for name in names if (target := known(name)) and target != _layer_of(path)}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` through each group of modules that import each other in a ring (Tarjan's
    strongly connected components, each read back as a path)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = set()
            while not group or group_top != module:
                group_top = stack.pop()
                on_stack.discard(group_top)
                group.add(group_top)
            if len(group) > 1:
                groups.append(group)

    for module in sorted(graph):
        if module not in index:
            visit(module)
    cycles = []
    for group in groups:  # a path from the group's first module back to it, inside the group
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            module = queue.pop(0)
            for target in sorted(graph[module] & group):
                if target == start:
                    queue.clear()
                    cycles.append(paths[module] + [start])
                    break
                if target not in paths:
                    paths[target] = paths[module] + [target]
                    queue.append(target)
    return cycles


def test_the_cycle_search_finds_rings_and_only_rings() -> None:
    ring = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert import_cycles(ring) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert import_cycles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"x"}}) == [["a", "b", "a"], ["x", "y", "x"]]
    child = imported_modules("subprocess.run([sys.executable, '-m', 'simulations.seed_logs', '--out', out])")
    assert child == [(1, "simulations.seed_logs")]
    package = imported_modules("subprocess.run([sys.executable, '-m', 'launch', 'run'])")  # runs launch/__main__.py
    assert package == [(1, "launch.__main__")] and (2, "launch.launch_cli") in imported_modules("import sys\nfrom launch.launch_cli import main")
    assert "from launch.launch_cli import" in (ROOT / "launch" / "__main__.py").read_text()  # the edge the graph then follows
    assert imported_modules("p.set_defaults(func='launch.serve:run_superlink')") == [(1, "launch.serve")]
    assert not imported_modules("print('server:port', 'x:y', 'a b:c')")
    hidden = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from model.network.networks import X\n"
    assert imported_modules(hidden)[-1] == (3, "model.network.networks")
    assert imported_modules(hidden, type_checking=False) == [(1, "typing")]


def test_no_module_imports_itself_through_others() -> None:
    """A ring of imports runs a module's code before its own import has finished, or (through ``python -m``) starts
    a child that imports its parent back: one of the two modules holds what both need, or is in the wrong layer."""
    cycles = import_cycles(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def imported_test_modules(source: str) -> list[tuple[int, str]]:
    """(line, name) of every import in ``source`` of a test module or of the conftest: ``tests.test_x``, ``test_x``
    (tests/ is on ``sys.path`` under pytest), ``from tests import test_x``, ``from .test_x import y``,
    ``from . import test_x``, and the same of ``conftest``."""
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
                  if (name.split(".")[-1].startswith("test_") or name.split(".")[-1] == "conftest")
                  and name.split(".")[:-1] in ([], ["tests"])]
    return found


def test_the_walk_finds_every_import_of_a_test_module() -> None:
    for source in ("from tests.test_client_app import _context", "import tests.test_federated_run",
                   "from test_hostile_inputs import FAST", "from .test_x import y", "from . import test_x",
                   "from tests import test_x", "def f():\n    from tests.test_x import y\n",
                   "from tests.conftest import ROOT", "import conftest", "from . import conftest",
                   "def f():\n    from tests.conftest import ROOT\n"):
        assert imported_test_modules(source), source
    assert not imported_test_modules("from tests.helpers import announced, ROOT\nimport pytest\n"
                                     "from tests import helpers\nfrom torch.testing import test_x\n"
                                     "from tests.ray_guard import left_by_ray\nimport conftest_x")


def test_no_test_module_imports_another() -> None:
    """What tests share lives in tests/helpers.py (builders) or tests/conftest.py (fixtures). A test module imported
    by another runs its module-level set-up a second time (pytest imports it under its own name), ties one test
    file's private helpers to another's, and a slow module's helpers pull its set-up into fast tests. The conftest
    too is imported by pytest under its own name: ``tests.conftest`` would be a second copy of it."""
    found = [f"{path.relative_to(ROOT)}:{line} imports {name}" for path in sorted((ROOT / "tests").glob("test_*.py"))
             for line, name in imported_test_modules(path.read_text())]
    assert not found, ("test modules import test modules or the conftest (share through tests/helpers.py):\n"
                       + "\n".join(found))
