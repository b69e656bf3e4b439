"""`launch run` checks the config on the operator's machine before anything is submitted (launch/run_check.py):
a mistake is one line naming the override or key, exit 2, and no run reaches the SuperLink."""

import subprocess
import sys

import pytest

from launch.processes import free_port
from launch.run_check import RunConfigError, check_run_config
from tests.helpers import ROOT


@pytest.mark.parametrize("overrides,message", [
    (["simulation.roundz=3"], r"override simulation\.roundz=3: conf/deploy\.yaml has no key simulation\.roundz; "
                              r"simulation has: .*\brounds\b"),
    (["nosuchgroup.x=1"], r"override nosuchgroup\.x=1: conf/deploy\.yaml has no key nosuchgroup; the top level has: "
                          r".*\bsimulation\b"),
    (["+simulation.roundz=3"], r"Unknown key simulation\.roundz"),
    (["privacy=usr"], r"privacy=usr: conf/privacy/ has no option 'usr'; choose one of bandmf, both, distributed, none, record, user\."),
    (["simulation.rounds"], r"cannot read override: .*simulation\.rounds.* \(write KEY=VALUE\)"),
    (["simulation.rounds=abc"], r"simulation\.rounds must be of type int; found 'abc'"),
    (["simulation.rounds=-1"], r"simulation\.rounds must be >= 1; found -1"),
])
def test_a_config_mistake_is_one_line_naming_the_key_without_hydras_plus_advice(overrides, message):
    with pytest.raises(RunConfigError, match=message) as caught:
        check_run_config("deploy", overrides)
    text = str(caught.value)
    assert "\n" not in text and "To append to your config use +" not in text


def test_a_missing_primary_config_is_named():
    with pytest.raises(RunConfigError, match=r"--config-name nope: there is no conf/nope\.yaml"):
        check_run_config("nope", [])


def test_the_readme_run_passes_the_check():
    check_run_config("deploy", ["simulation.rounds=20", "simulation.sample_rate=0.5"])


@pytest.mark.slow  # the real command in a child process (seconds of imports); the check itself: in this process above
def test_launch_run_with_a_typo_exits_2_in_one_line_before_contacting_any_superlink(tmp_path):
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens: reaching it would be a connection error, not this one
    result = subprocess.run([sys.executable, "-m", "launch", "run", "--superlink", nobody, "--insecure",
                             "--output-dir", str(tmp_path / "out"), "simulation.roundz=3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        next(line for line in result.stderr.splitlines() if line.startswith("error: override simulation.roundz=3"))]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
