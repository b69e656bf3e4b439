"""The closed-loop experiment end to end on a small population, and the rules it is built on."""

import io
import json

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from generation.conditioning import build_request
from model.features.recent_choices import RecentChoices
from server.settings import settings_from_config
from simulations.experiment import run_experiment
from simulations.federation.simulation_settings import simulated_settings
from simulations.loop.closed_loop import Edits, edited_request
from simulations.loop.policies import Conditioning
from simulations.loop.pretraining import flower_overrides
from simulations.loop.experiment_report import METRICS
from simulations.loop.experiment_settings import POLICIES, LoopSettings, experiment_settings_from_config
from validation.config import ConfigError
from tests.helpers import ROOT

SMALL = [
    "population=small", "population.num_users=30", "population.eval_users=6", "population.days=10",
    "simulation.rounds=2", "simulation.sample_rate=0.5", "privacy.target_epsilon=50", "privacy.noise=seeded",
    "experiment.users=30", "experiment.days=8", "experiment.retrain.every_days=4", "experiment.retrain.rounds=1",
    "experiment.retrain.sample_rate=0.5", "experiment.report.bootstrap=200", "experiment.report.curve_interactions=8",
]


def _settings(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return experiment_settings_from_config(compose(config_name="experiment", overrides=SMALL + list(overrides)))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The whole experiment, every policy, on 30 users (13-26 s on 2 busy cores): its tests are slow; the tiny loop of
    tests/test_experiment_audio.py runs ``run_experiment`` end to end in ``make test-fast``, and the rules below
    are tested on their own."""
    output_dir = tmp_path_factory.mktemp("experiment")
    log = io.StringIO()
    payload = run_experiment(_settings(), output_dir, stream=log)
    return payload, output_dir, log.getvalue()


@pytest.mark.slow
def test_experiment_writes_every_policy_with_each_figure_and_its_interval(small_run):
    payload, output_dir, _ = small_run
    saved = json.loads((output_dir / "experiment.json").read_text())
    assert saved["users"] == 30 and set(saved["policies"]) == set(POLICIES)
    for row in saved["policies"].values():
        for metric in METRICS:
            lo, hi = row[f"{metric}_ci"]
            assert isinstance(row[metric], float) and lo <= row[metric] <= hi
    assert 0.0 <= saved["policies"]["baseline"]["first_satisfaction"] <= 1.0
    assert "simulated" in saved["generation"]
    assert (output_dir / "experiment.png").stat().st_size > 0 and (output_dir / "cold_start.png").stat().st_size > 0


@pytest.mark.slow
def test_cold_start_curve_starts_at_the_first_interaction_for_every_user(small_run):
    payload, _, _ = small_run
    for curve in payload["cold_start_curve"].values():
        assert curve["interaction"][0] == 1 and curve["users"][0] == 30  # every user makes a first request
        assert all(lo <= p <= hi for p, (lo, hi) in zip(curve["first_satisfaction"], curve["ci"]))


@pytest.mark.slow
def test_oracle_first_generations_satisfy_at_least_as_often_as_the_baseline(small_run):
    policies = small_run[0]["policies"]
    assert policies["oracle"]["first_satisfaction"] >= policies["baseline"]["first_satisfaction"]


@pytest.mark.slow
def test_typed_genres_in_prompts_are_honoured_by_every_policy(small_run):
    for name, row in small_run[0]["policies"].items():
        assert row["typed_genre_requests"] > 0, name
        assert row["typed_genre_honoured"] == 1.0, name


@pytest.mark.slow
def test_private_retraining_reports_its_epsilon_within_the_budget(small_run):
    privacy = small_run[0]["privacy"]
    assert privacy["retraining"]["rounds"] == 1 and 0.0 < privacy["retraining"]["epsilon"] <= 50.0
    assert privacy["pretraining"]["rounds"] == 2 and privacy["pretraining"]["epsilon"] <= 50.0


@pytest.mark.slow
def test_a_fixed_seed_reproduces_the_same_results(small_run, tmp_path):
    # Run alone, federated_dp must give what it gave after the baseline: same users, same seeds, nothing shared.
    again = run_experiment(_settings("experiment.policies=[federated_dp]"), tmp_path, stream=io.StringIO())
    first = small_run[0]["policies"]["federated_dp"]
    second = again["policies"]["federated_dp"]
    assert second["requests"] == first["requests"] and second["typed_genre_requests"] == first["typed_genre_requests"]
    for metric in METRICS:  # counts are exact; float32 inference may differ in the last bits with memory layout
        assert second[metric] == pytest.approx(first[metric], rel=1e-6)
        assert second[f"{metric}_ci"] == pytest.approx(first[f"{metric}_ci"], rel=1e-6)


@pytest.mark.slow
def test_progress_names_each_policy_and_day(small_run):
    log = small_run[2]
    assert "[oracle] day 8/8" in log and "retrained:" in log and "simulated" in log


def test_a_chosen_style_wins_over_the_prompt_and_the_preference_on_a_redo():
    jazz_fan = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    conditioning = Conditioning(jazz_fan, RecentChoices(bpm=90.0, instruments=("piano",)))
    edits = Edits(style="rock", bpm=140.0, toggles=[("piano", False), ("electric_guitar", True)])
    request = edited_request(conditioning, "something relaxing", edits, LoopSettings(), seed=1)
    assert request.main_genre == "rock" and request.bpm == 140
    assert request.instruments[0] == "electric_guitar" and "piano" not in request.instruments
    assert build_request(jazz_fan, "something relaxing").main_genre == "jazz"  # without edits the prior leads


def test_experiment_config_rejects_unknown_keys_and_unknown_policies_naming_them():
    with pytest.raises(ConfigError, match="experiment.surprise"):
        _settings("+experiment.surprise=1")
    with pytest.raises(ConfigError, match="experiment.policies"):
        _settings("experiment.policies=[baseline,magic]")
    with pytest.raises(ConfigError, match="experiment.days"):
        _settings("experiment.days=5")


@pytest.mark.parametrize("privacy", ["user", "both", "none"])
def test_flower_overrides_make_the_federated_config_compose_to_the_experiments_run_settings(privacy):
    run = _settings(f"privacy={privacy}", "population.num_users=77", "train.lr=0.002").run
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        composed = simulated_settings(compose(config_name="config", overrides=flower_overrides(run)))
    assert composed == run


@pytest.mark.slow
def test_federated_policy_can_start_from_a_real_flower_simulation(tmp_path):
    settings = _settings("experiment.pretrain.engine=flower", "experiment.policies=[baseline,federated_dp]",
                         "simulation.final_eval_clients=0", "simulation.central_baseline_epochs=0")
    payload = run_experiment(settings, tmp_path, stream=io.StringIO())
    assert payload["privacy"]["pretraining"]["engine"] == "flower"
    assert payload["privacy"]["pretraining"]["rounds"] == 2
    assert (tmp_path / "pretrain_flower" / "checkpoint.pt").is_file()
    assert set(payload["policies"]) == {"baseline", "federated_dp"}
