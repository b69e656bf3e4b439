"""Every late crash of issue 16 item 6 is refused before Ray starts: exit code 2, the key, the rule and the value.

``check_simulation_can_start`` (the population, then ``server.preflight.check_can_start``) runs after the schema
check (``simulated_settings``) and before the simulation engine; the
entry point is run as a real process for the cases Hydra itself refuses.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
import torch

from server.preflight import model_bytes_per_process
from server.settings import settings_from_config
from simulations.federation.simulation_settings import check_simulation_can_start, simulated_settings
from tests.helpers import ROOT


def _refused(compose_config, *overrides: str) -> str:
    with pytest.raises(ValueError) as caught:
        check_simulation_can_start(simulated_settings(compose_config(*overrides)))
    return str(caught.value)


def test_the_default_config_and_small_runs_pass(compose_config):
    check_simulation_can_start(simulated_settings(compose_config()))
    check_simulation_can_start(simulated_settings(compose_config("population=small", "privacy=both")))


def test_a_missing_checkpoint_is_refused_naming_the_path(compose_config, tmp_path):
    message = _refused(compose_config, "resume=true", f"checkpoint={tmp_path}/nope.pt")
    assert "checkpoint" in message and "nope.pt" in message and "no such file" in message


@pytest.mark.parametrize("content", [b"not a checkpoint at all\n", b""])
def test_a_file_that_is_not_a_checkpoint_is_refused(compose_config, tmp_path, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    message = _refused(compose_config, "resume=true", f"checkpoint={path}")
    assert str(path) in message and "not a checkpoint" in message


def test_a_zip_that_torch_did_not_write_is_not_a_checkpoint(compose_config, tmp_path):
    path = tmp_path / "other.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert "not a checkpoint" in _refused(compose_config, "resume=true", f"checkpoint={path}")


def test_a_torch_file_passes_the_preflight(compose_config, tmp_path):
    from server.checkpoint import Checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, Checkpoint(round=1, arrays={"w": torch.zeros(2).numpy()}, ledger={"history": []},
                                     noise_multiplier=None))  # what a run writes: it loads weights-only
    check_simulation_can_start(simulated_settings(compose_config("resume=true", f"checkpoint={path}")))


@pytest.mark.parametrize("overrides,words", [
    (["privacy=none", "population.num_users=1000000000000"], "population.num_users"),
    (["population.days=100000"], "population.days"),
    (["privacy.target_epsilon=1e-9"], "privacy.target_epsilon"),
    (["model.hidden_size=1000000"], "model.hidden_size"),
    (["simulation.nodes=100000", "population=small"], "simulation.nodes"),
])
def test_sizes_and_budgets_that_crashed_after_ray_started_are_refused(compose_config, overrides, words):
    message = _refused(compose_config, *overrides)
    assert words in message and "found" in message.lower()


def test_a_model_too_large_for_this_machine_says_how_the_bound_is_computed(compose_config):
    message = _refused(compose_config, "model.hidden_size=1000000")
    assert "parameters" in message and "MemAvailable" in message


def test_the_memory_estimate_grows_with_the_model_and_with_record_level_dp(compose_config):
    small = settings_from_config(compose_config("privacy=none"))
    wide = settings_from_config(compose_config("privacy=none", "model.hidden_size=128"))
    record = settings_from_config(compose_config("privacy=record"))
    assert model_bytes_per_process(wide) > 3 * model_bytes_per_process(small)
    assert model_bytes_per_process(record) > model_bytes_per_process(small)


def _run(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations.run", *overrides,
                           "hydra.run.dir=/tmp/fedpref-never-created"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("overrides,words", [
    (["foo.bar=1"], "foo"),
    (["population=nonexistent"], "nonexistent"),
    # The child imports torch and Opacus to calibrate (seconds): make test only; the check itself is fast above.
    pytest.param(["privacy.target_epsilon=1e-9"], "privacy.target_epsilon", marks=pytest.mark.slow),
])
def test_the_entry_point_exits_2_for_unknown_keys_options_and_late_crashes(overrides, words):
    result = _run(*overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert words in result.stderr and "Traceback" not in result.stderr
