"""Every script in benchmarks/ still runs: each in its smallest mode, as a user would run it, ending with its JSON
line and the keys a reader of that line relies on. (The privacy audit and the device room have their own smoke
tests: tests/test_privacy_audit_benchmark.py, tests/test_device_room_benchmark.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SMOKE = {
    "dp_step.py": (["--quick", "--repetitions", "1"], {"dp_over_nonprivate", "opacus_over_dp"}),
    "device_inference.py": (["--quick"], None),
    "attacks_vs_defences.py": (["--users", "6", "--eval-users", "4", "--rounds", "2", "--days", "7",
                                "--attacks", "none,overflow", "--defences", "FedAvg,FedAvg+DP"], None),
    "privacy_utility.py": (["--users", "40", "--eval-users", "8", "--points", "2", "--rounds", "2", "--epsilon", "8",
                            "--delta", "1e-3", "--central-epochs", "1", "population=small"],
                           {"users", "eval_points", "parameters", "privacy", "table", "seconds"}),
    "distributed_round.py": (["--devices", "4", "--repetitions", "1"],
                             {"devices", "server_noise_s", "device_noise_s", "ratio"}),
    "simulation_scale.py": (["--tiny"], {"users", "clients_per_round", "round_s", "batched_floor_s", "ratio_batched",
                                         "peak_rss_mb"}),
}


def _json_line(script: str, args: list[str]) -> dict:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SMOKE))
def test_each_benchmark_runs_in_its_smallest_mode_and_ends_with_its_json_line(script):
    args, keys = SMOKE[script]
    line = _json_line(script, args)
    assert isinstance(line, dict) and line
    if keys is not None:
        assert keys <= set(line), f"{script}'s JSON line lacks {sorted(keys - set(line))}"


def test_every_benchmark_script_has_a_smoke_test():
    scripts = {p.name for p in (ROOT / "benchmarks").glob("*.py")}
    own = {"privacy_audit.py", "device_room.py"}  # smoke-tested in their own modules
    assert scripts - own == set(SMOKE), f"benchmarks without a smoke test: {sorted(scripts - own - set(SMOKE))}"


@pytest.mark.slow
def test_the_surface_trial_writes_the_json_the_planner_reads_its_table_and_plot(tmp_path):
    """``--surface`` on a tiny pool, into a trial folder: the committed surface is left alone."""
    from privacy.plan import load_surface

    line = _json_line("privacy_utility.py", ["--surface", "--users", "60", "--eval-users", "8", "--rounds", "1",
                                             "--points", "2", "--surface-out", str(tmp_path), "population=small"])
    assert len(line["surface"]) == 20 and {r["noise_cohort"] for r in line["surface"]} == {True}
    assert (tmp_path / "privacy_surface.md").read_text().count("noise-cohort simulation") == 20
    assert (tmp_path / "privacy_surface.png").stat().st_size > 10_000
    assert load_surface(tmp_path / "measured_surface.json")["surface"] == line["surface"]
