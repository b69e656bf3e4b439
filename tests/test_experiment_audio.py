"""The closed loop through ACE-Step 1.5's pipeline: audio on each device, reactions from descriptors."""

import io
import json
import os
import re
import subprocess
import sys
import wave

import pytest
from hydra import compose, initialize_config_dir

from simulations.experiment import run_experiment
from simulations.loop.experiment_settings import experiment_settings_from_config
from validation.config import ConfigError
from tests.helpers import ROOT

TINY_LOOP = [
    "population=small", "population.num_users=20", "population.eval_users=4", "population.days=10",
    "experiment.users=2", "experiment.days=8", "experiment.policies=[baseline]", "experiment.retrain.every_days=0",
    "experiment.conditioning.duration_s=10", "experiment.behaviour.max_attempts=2", "experiment.report.bootstrap=50",
    "experiment.report.curve_interactions=4",
]


def _settings(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return experiment_settings_from_config(compose(config_name="experiment", overrides=TINY_LOOP + list(overrides)))


def test_the_tiny_loop_without_audio_runs_end_to_end_and_writes_its_report(tmp_path):
    """The experiment end to end in well under a second: what ``make test-fast`` keeps of the runs below."""
    run = run_experiment(_settings(), tmp_path, stream=io.StringIO())
    assert run["audio"] is None and "no audio" in run["generation"]
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert list(saved["policies"]) == ["baseline"] and saved["policies"]["baseline"]["requests"] > 0


@pytest.mark.slow  # 7-11 s on 2 busy cores, most of it ACE-Step's tiny pipeline (tests/test_acestep_pipeline.py)
def test_the_tiny_pipeline_loop_writes_audio_on_each_device_and_judges_the_same_descriptors(tmp_path):
    audio_run = run_experiment(_settings("generation=acestep_tiny", "generation.keep_audio=3",
                                         "generation.num_inference_steps=2"), tmp_path / "audio", stream=io.StringIO())
    simulated_run = run_experiment(_settings(), tmp_path / "simulated", stream=io.StringIO())
    assert audio_run["policies"] == simulated_run["policies"]  # reactions come from the same descriptors
    assert "tiny random weights" in audio_run["generation"] and "simulated descriptor" in audio_run["generation"]
    assert simulated_run["audio"] is None and "no audio" in simulated_run["generation"]

    audio = audio_run["audio"]
    files = sorted((tmp_path / "audio" / "devices" / "baseline").glob("user_*/audio/*.wav"))
    assert len({f.parent for f in files}) == 2 and len(files) == audio["files_kept"] <= 2 * 3
    assert audio["generations"] >= len(files) and audio["bytes_kept"] == sum(f.stat().st_size for f in files)
    assert 0 < audio["seconds_per_generation"]["p50"] <= audio["seconds_per_generation"]["max"]
    with wave.open(str(files[0])) as piece:
        assert piece.getframerate() == 48_000 and piece.getnframes() == 10 * 48_000
    saved = json.loads((tmp_path / "audio" / "experiment.json").read_text())
    assert saved["audio"]["reactions"].startswith("simulated descriptor")


def test_real_weights_need_a_complete_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"generation=acestep needs generation.pipeline_dir=PATH"):
        _settings("generation=acestep")
    (tmp_path / "ace" / "vae").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"Missing: model_index.json; transformer/ \(no such folder\); .*"
                                          r"vae/config.json; vae/ weights"):
        _settings("generation=acestep", f"generation.pipeline_dir={tmp_path / 'ace'}")
    with pytest.raises(ConfigError, match=re.escape(f"Missing: {tmp_path / 'nowhere'} (no such folder)")):
        _settings("generation=acestep", f"generation.pipeline_dir={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match=r"pipeline_dir is read only with generation=acestep"):
        _settings(f"generation.pipeline_dir={tmp_path / 'ace'}")


@pytest.mark.slow  # the real command in a child process: seconds of imports; the same check in this process above
def test_an_incomplete_folder_stops_the_command_before_anything_starts(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "simulations.experiment", "generation=acestep",
         f"generation.pipeline_dir={tmp_path / 'nowhere'}", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"Missing: {tmp_path / 'nowhere'} (no such folder)" in done.stderr
    assert not (run_dir / "experiment.json").exists()
