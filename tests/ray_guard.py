"""A pytest plugin: a test not marked ``slow`` that starts Ray fails (``make test-fast`` runs no Flower simulation).

Ray writes its session folder under ``$RAY_TMPDIR`` (``ray._common.utils.get_default_system_temp_dir``) the moment
it starts, in this process or in any child process (children inherit the environment). For each test not marked
slow the plugin points ``RAY_TMPDIR`` at an empty folder of its own before any of the test's fixtures is set up (so a
module fixture that runs a simulation is caught with the first fast test that uses it), and after the test's
teardown fails the test if anything appeared there or if Ray is still initialised in this process. Slow tests run
with the environment untouched. ``tests/test_ray_guard.py`` checks the plugin on a fake session and (slow) that a
real ``ray.init`` writes where the plugin looks.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

_PREVIOUS = pytest.StashKey[str | None]()
"""A fast test's stash: ``RAY_TMPDIR`` before the plugin set it (restored after the test)."""
_FOLDER = pytest.StashKey[Path]()
"""The session's stash: the ``RAY_TMPDIR`` of its fast tests, shared by them (empty while they pass)."""


def left_by_ray(folder: Path) -> list[str]:
    """The first few paths under ``folder`` (a ``RAY_TMPDIR``): Ray's ``ray/session_...`` folders, sockets, logs."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))[:5]


def _ray_initialised() -> bool:
    ray = sys.modules.get("ray")  # imported by the test if at all (flwr.simulation imports it); never imported here
    return ray is not None and bool(getattr(ray, "is_initialized", lambda: False)())


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    if item.get_closest_marker("slow") is None:
        if _FOLDER not in item.config.stash:
            item.config.stash[_FOLDER] = Path(tempfile.mkdtemp(prefix="fedpref-no-ray-"))
        item.stash[_PREVIOUS] = os.environ.get("RAY_TMPDIR")
        os.environ["RAY_TMPDIR"] = str(item.config.stash[_FOLDER])
    return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    try:
        return (yield)
    finally:
        if _PREVIOUS in item.stash:  # a fast test
            previous = item.stash[_PREVIOUS]
            if previous is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = previous
            folder = item.config.stash[_FOLDER]
            left, running = left_by_ray(folder), _ray_initialised()
            if running:
                sys.modules["ray"].shutdown()  # so the tests after it do not fail for it
            if left or running:
                _empty(folder)
                pytest.fail(f"{item.nodeid} started Ray ("
                            + ("still initialised in this process" if running else "left " + ", ".join(left))
                            + ") but is not marked slow: Flower simulations run only in `make test`. Mark it "
                            "@pytest.mark.slow (`make test-fast` runs -m 'not slow').", pytrace=False)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _FOLDER in config.stash:
        shutil.rmtree(config.stash[_FOLDER], ignore_errors=True)
