"""``python -m privacy.plan`` and ``privacy.plan=true``: the plan's numbers are the ledger's, what cannot work is
refused naming the flag, and the run's plan uses the run's own calibration and starts nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from privacy.accounting import PrivacyLedger
from privacy.contribution import contribution_sensitivity
from privacy.plan import main
from privacy.utility_surface import PredictedUtility, predict_top1
from tests.helpers import ROOT


def _plan(capsys, *flags: str) -> dict:
    assert main([*flags, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _cli(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "privacy.plan", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_the_planned_noise_multiplier_spends_at_most_the_target_epsilon_by_the_ledger(capsys):
    plan = _plan(capsys, "--users", "1000", "--sample-rate", "0.05", "--rounds", "20", "--epsilon", "2")
    ledger = PrivacyLedger()
    ledger.record(noise_multiplier=plan["noise_multiplier"], sample_rate=0.05, steps=20)
    spent = ledger.epsilon(delta=1.0 / (10 * 1000))  # the default delta, 1/(10N)
    assert plan["delta"] == pytest.approx(1e-4)
    assert 0.98 * 2.0 <= spent <= 2.0  # calibrated to within 1 % below the target
    assert plan["epsilon"] == pytest.approx(spent)
    less_noise = PrivacyLedger()
    less_noise.record(noise_multiplier=0.97 * plan["noise_multiplier"], sample_rate=0.05, steps=20)
    assert less_noise.epsilon(delta=1e-4) > 2.0  # and it is (nearly) the smallest z that fits


def test_a_given_noise_multiplier_gives_the_ledgers_epsilon_and_the_noise_per_round(capsys):
    plan = _plan(capsys, "--users", "2000", "--clients-per-round", "50", "--rounds", "40", "--noise-multiplier", "1.3",
                 "--delta", "1e-5", "--clipping-norm", "0.8", "--accountant", "rdp")
    ledger = PrivacyLedger()
    ledger.record(noise_multiplier=1.3, sample_rate=50 / 2000, steps=40)
    assert plan["sample_rate"] == pytest.approx(0.025) and plan["clients_per_round"] == pytest.approx(50)
    assert plan["epsilon"] == pytest.approx(ledger.epsilon(delta=1e-5, accountant="rdp"))
    assert plan["noise_std"] == pytest.approx(1.3 * contribution_sensitivity(0.8) / 50)  # σ = z·S/K
    assert plan["noise_to_signal"] == pytest.approx(plan["noise_std"] / 0.8)
    assert plan["target_epsilon"] is None


def test_a_banded_plan_accounts_the_rounds_a_device_can_join_unamplified_and_its_cohort_is_n_over_b(capsys):
    plan = _plan(capsys, "--users", "10000", "--clients-per-round", "1000", "--rounds", "20", "--epsilon", "2",
                 "--bands", "10")
    ledger = PrivacyLedger()
    ledger.record(noise_multiplier=plan["noise_multiplier"], sample_rate=1.0, steps=2)  # ceil(20 / 10), no sampling
    assert plan["epsilon"] == pytest.approx(ledger.epsilon(delta=1e-5)) and 1.98 <= plan["epsilon"] <= 2.0
    assert plan["bands"] == 10 and plan["clients_per_round"] == pytest.approx(1000)


def test_the_default_clipping_norm_is_the_projects_user_level_config(capsys):
    import yaml

    configured = yaml.safe_load((ROOT / "conf" / "privacy" / "user.yaml").read_text())["clipping_norm"]
    plan = _plan(capsys, "--users", "100", "--sample-rate", "0.1", "--rounds", "5", "--noise-multiplier", "1")
    assert plan["clipping_norm"] == configured


def test_the_text_plan_names_z_epsilon_the_noise_and_the_utility_the_measured_surface_predicts(capsys):
    # In this process: a child would spend seconds importing Opacus (the exit code of the command line: below).
    assert main(["--users", "100000", "--clients-per-round", "10000", "--rounds", "20", "--epsilon", "2",
                 "--delta", "1e-6"]) == 0
    printed = capsys.readouterr().out
    for words in ("noise multiplier z", "epsilon ε", "rdp accountant", "noise std σ", "σ/C", "verdict:",
                  "predicted from the measured surface", "named-else-recent rule"):
        assert words in printed
    assert main(["--users", "1000", "--clients-per-round", "10", "--rounds", "20", "--epsilon", "0.5",
                 "--delta", "1e-5"]) == 0
    assert "beyond the measured surface" in capsys.readouterr().out  # no number is invented past what was measured


SURFACE = {"rounds": 20, "pool_users": 1000, "simulated_sample_rate": 0.1, "rules": {"named_else_recent": 0.55},
           "surface": [{"simulated_users": 1000, "noise_to_signal": s, "top1": t, "top1_ci": [t - 0.01, t + 0.02],
                        "nonprivate_top1": 0.63} for s, t in ((1e-4, 0.62), (1e-3, 0.60), (1e-2, 0.61), (1e-1, 0.50))]
           + [{"simulated_users": 100, "noise_to_signal": 5e-2, "top1": 0.40, "top1_ci": [0.39, 0.41],
               "nonprivate_top1": 0.62}]}


def test_the_prediction_interpolates_in_log_noise_never_rises_with_noise_and_keeps_its_interval():
    halfway = predict_top1(SURFACE, 10 ** -3.5, rounds=20, clients_per_round=100)
    assert isinstance(halfway, PredictedUtility) and halfway.top1 == pytest.approx(0.6125)  # 0.62 .. (0.60+0.61)/2
    assert halfway.low == pytest.approx(halfway.top1 - 0.01) and halfway.high == pytest.approx(halfway.top1 + 0.02)
    assert halfway.caveats == ()
    less = predict_top1(SURFACE, 1e-6, rounds=20, clients_per_round=100)
    assert less.top1 == pytest.approx(0.62) and "at least this" in less.caveats[0]
    other = predict_top1(SURFACE, 1e-2, rounds=40, clients_per_round=50)
    assert other.caveats == ("the surface trained 20 rounds, this plan 40",
                             "the surface trained 100 clients a round there, this plan 50: optimistic")
    smaller = predict_top1(SURFACE, 7e-2 / 2, rounds=20, clients_per_round=50)  # between 1e-1 (pool) and 5e-2 (10 a round)
    assert smaller.top1 < 0.5 and "10 clients a round there" not in " ".join(smaller.caveats)
    assert "beyond the measured surface" in predict_top1(SURFACE, 0.2, rounds=20, clients_per_round=100)


@pytest.mark.parametrize("flags,flag", [
    (["--sample-rate", "0", "--epsilon", "2"], "--sample-rate must be in (0, 1]"),
    (["--sample-rate", "1.5", "--epsilon", "2"], "--sample-rate must be in (0, 1]"),
    (["--clients-per-round", "1001", "--epsilon", "2"], "--clients-per-round must be in (0, --users = 1000]"),
    (["--sample-rate", "0.1", "--delta", "1e-3", "--epsilon", "2"], "--delta must be in (0, 1/--users)"),
    (["--sample-rate", "0.1", "--epsilon", "1e-9"], "--epsilon 1e-09 cannot be reached"),
    (["--sample-rate", "0.1", "--epsilon", "2", "--noise-multiplier", "1"], "--noise-multiplier: not allowed with"),
    (["--sample-rate", "0.1"], "one of the arguments --epsilon --noise-multiplier is required"),
    (["--sample-rate", "0.1", "--clients-per-round", "10", "--epsilon", "2"], "--clients-per-round: not allowed with"),
    (["--sample-rate", "0.1", "--noise-multiplier", "0"], "--noise-multiplier must be > 0"),
    (["--sample-rate", "0.1", "--epsilon", "2", "--bands", "0"], "--bands must be in [1, --rounds"),
])
def test_what_cannot_work_exits_2_naming_the_flag_and_the_rule(flags, flag, capsys):
    with pytest.raises(SystemExit) as exit_:  # argparse's error: the exit a shell sees (the CLI test below runs it)
        main(["--users", "1000", "--rounds", "10", *flags])
    printed = capsys.readouterr()
    assert exit_.value.code == 2 and flag in printed.err, printed.err
    assert printed.out == ""


def test_the_command_line_refuses_with_exit_2_and_no_traceback():
    run = _cli("--users", "1000", "--rounds", "10", "--sample-rate", "1.5", "--epsilon", "2")
    assert run.returncode == 2 and "--sample-rate must be in (0, 1]" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and run.stdout == ""


def test_the_planner_imports_no_torch():
    check = "import sys, privacy.plan; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.stdout.strip() == "False", run.stderr


@pytest.mark.slow  # the real command in a child process: seconds of imports (torch, Opacus, Flower) on 2 cores
def test_privacy_plan_true_prints_the_runs_own_calibration_and_starts_nothing(tmp_path, compose_config):
    from server.run_start import evaluation_rate
    from server.aggregation import noise_multiplier_for
    from simulations.federation.simulation_settings import simulated_settings

    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "simulations.run", "population=small", "privacy.plan=true",
                          f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "privacy.plan=true" in run.stdout and "nothing ran" in run.stdout and "verdict:" in run.stdout
    assert not (out / "metrics.json").exists() and not (out / "checkpoint.pt").exists()  # no round, no Ray
    settings = simulated_settings(compose_config("population=small"))
    sim = settings.simulation
    z = noise_multiplier_for(settings.privacy, sample_rate=sim.sample_rate, rounds=sim.rounds,
                             evaluation_rate=evaluation_rate(settings, settings.population.num_users))
    printed = re.search(r"noise multiplier z\s+([0-9.]+)", run.stdout)
    assert printed and float(printed.group(1)) == pytest.approx(z, abs=1e-4)


def test_the_printed_plan_is_the_runs_own_calibration(compose_config, capsys):
    """What the command above prints (``print_plan``), in this process: the run's own z, and nothing ran."""
    from server.aggregation import noise_multiplier_for
    from server.run_start import evaluation_rate
    from simulations.federation.simulation_settings import simulated_settings
    from simulations.run import print_plan

    settings = simulated_settings(compose_config("population=small", "privacy.plan=true"))
    print_plan(settings)
    printed = capsys.readouterr().out
    assert "privacy.plan=true" in printed and "nothing ran" in printed and "verdict:" in printed
    sim = settings.simulation
    z = noise_multiplier_for(settings.privacy, sample_rate=sim.sample_rate, rounds=sim.rounds,
                             evaluation_rate=evaluation_rate(settings, settings.population.num_users))
    shown = re.search(r"noise multiplier z\s+([0-9.]+)", printed)
    assert shown and float(shown.group(1)) == pytest.approx(z, abs=1e-4)


def test_privacy_plan_true_without_user_level_dp_says_there_is_nothing_to_plan(compose_config, capsys):
    from simulations.federation.simulation_settings import simulated_settings
    from simulations.run import print_plan

    print_plan(simulated_settings(compose_config("population=small", "privacy=none", "privacy.plan=true")))
    assert "no user-level mechanism to plan" in capsys.readouterr().out


def test_the_schema_refuses_a_plan_that_is_not_a_boolean(compose_config):
    from simulations.federation.simulation_settings import simulated_settings
    from validation.config import ConfigError

    with pytest.raises(ConfigError, match="privacy.plan"):
        simulated_settings(compose_config("privacy.plan=maybe"))


@pytest.mark.parametrize("config_name", ["config", "deploy"])
def test_an_entry_that_would_run_refuses_a_config_that_asks_only_for_a_plan(config_name):
    from server.preflight import check_can_start
    from server.server_app import compose_settings
    from validation.config import ConfigError

    settings = compose_settings(config_name, ["privacy.plan=true"])
    with pytest.raises(ConfigError, match="privacy.plan=true asks for the privacy plan only"):
        check_can_start(settings)  # the ServerApps' and launch run's check, before a round


def test_the_closed_loop_experiment_refuses_a_config_that_asks_only_for_a_plan():
    from hydra import compose, initialize_config_dir

    from simulations.loop.experiment_settings import experiment_settings_from_config
    from validation.config import ConfigError

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="experiment", overrides=["privacy.plan=true"])
    with pytest.raises(ConfigError, match="privacy.plan=true asks for the privacy plan only"):
        experiment_settings_from_config(cfg)


def test_under_secagg_the_runs_plan_uses_the_quantised_contributions_sensitivity(compose_config):
    from privacy.contribution import STATISTICS, contribution_sensitivity
    from server.preflight import model_parameters
    from server.run_start import privacy_plan
    from server.secagg import SecureAggregator
    from simulations.federation.simulation_settings import simulated_settings

    settings = simulated_settings(compose_config("population=small", "secagg.enabled=true", "simulation.nodes=0"))
    plan = privacy_plan(settings, settings.population.num_users)
    secure = SecureAggregator(settings.secagg, timeout_s=1.0)
    c = settings.privacy.clipping_norm
    assert plan.sensitivity == secure.sensitivity(c, model_parameters(settings) + len(STATISTICS))
    assert plan.sensitivity > contribution_sensitivity(c)  # the quantisation error's share, as a round noises it
    assert plan.noise_std == pytest.approx(plan.noise_multiplier * plan.sensitivity / plan.expected_clients)
