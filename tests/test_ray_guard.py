"""The Ray guard (``tests/ray_guard.py``): a test not marked slow that starts Ray fails; a slow one may."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.ray_guard import left_by_ray

INNER = '''
import os
from pathlib import Path

import pytest


def _start_ray_in_a_child():  # what a Ray start leaves, as a child process would leave it
    session = Path(os.environ["RAY_TMPDIR"]) / "ray" / "session_2026-12-07_00-00-00_000000_1"
    session.mkdir(parents=True)
    (session / "logs").mkdir()


def test_fast_without_ray():
    pass


def test_fast_with_ray():
    _start_ray_in_a_child()


@pytest.fixture(scope="module")
def simulation():
    _start_ray_in_a_child()


def test_fast_with_a_module_fixture_that_starts_ray(simulation):
    pass


@pytest.mark.slow
def test_slow_with_ray(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # the guard leaves a slow test's environment (the outer run's)
    _start_ray_in_a_child()


def test_fast_after_the_others():
    assert not any(Path(os.environ["RAY_TMPDIR"]).iterdir())
'''


def test_a_fast_test_that_starts_ray_fails_naming_the_rule_and_a_slow_one_passes(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    slow: slow\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_inprocess("-p", "tests.ray_guard", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5, errors=2)
    result.stdout.fnmatch_lines(["*test_fast_with_ray started Ray (left ray, ray/session_*) but is not marked slow*",
                                 "*test_fast_with_a_module_fixture_that_starts_ray started Ray*"])
    assert "test_slow_with_ray started Ray" not in result.stdout.str()


@pytest.mark.slow
def test_ray_writes_its_session_under_ray_tmpdir_where_the_guard_looks():
    """Pins the guard's one assumption about Ray; fails if an upgrade moves Ray's session folder elsewhere."""
    code = "import ray; ray.init(num_cpus=1, include_dashboard=False); ray.shutdown()"
    # Not tmp_path: Ray's socket paths under it would pass the 107 bytes AF_UNIX allows.
    folder = Path(tempfile.mkdtemp(prefix="ray-guard-"))
    try:
        env = os.environ | {"RAY_TMPDIR": str(folder)}
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert list((folder / "ray").glob("session_*")), left_by_ray(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
