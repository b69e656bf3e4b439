"""A tiny real federated run in Flower's simulation engine (Ray), end to end, with resume and the budget stop."""

import json

import pytest
import torch
from opacus.accountants import RDPAccountant

from privacy.accounting import PrivacyLedger
from server.checkpoint import load_checkpoint
from tests.helpers import tiny_simulation

pytestmark = pytest.mark.slow  # every test here runs Flower's simulation engine (Ray): `make test` only


@pytest.fixture(scope="module")
def user_level_runs(tmp_path_factory):
    """Two rounds under user-level DP; a resume to four rounds with a larger budget; a resume past that budget."""
    from hydra import compose, initialize_config_dir

    from tests.helpers import ROOT

    def compose_config(*overrides):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    dirs = [tmp_path_factory.mktemp(name) for name in ("first", "resumed", "exhausted")]
    first = tiny_simulation(compose_config, dirs[0], "simulation.rounds=2", "privacy.target_epsilon=20")
    resumed = tiny_simulation(compose_config, dirs[1], "simulation.rounds=4", "privacy.target_epsilon=40",
                              "resume=true", f"checkpoint={dirs[0] / 'checkpoint.pt'}")
    exhausted = tiny_simulation(compose_config, dirs[2], "simulation.rounds=50", "privacy.target_epsilon=40",
                                "resume=true", f"checkpoint={dirs[1] / 'checkpoint.pt'}")
    return first, resumed, exhausted, dirs


def test_federated_training_improves_the_global_model(compose_config, tmp_path):
    metrics = tiny_simulation(compose_config, tmp_path, "privacy=none", "simulation.rounds=5",
                              "simulation.sample_rate=1.0", "strategy.momentum=0", "strategy.server_lr=1", "train.lr=0.1")
    assert len(metrics["rounds"]) == 5
    assert metrics["final"]["eval_nll"] < metrics["initial"]["eval_nll"] - 0.02
    assert all(r["replies"] >= 1 and r["failed"] == 0 and r["rejected"] == 0 for r in metrics["rounds"])
    assert {"eval_top1", "eval_nll", "baselines"} <= set(metrics["final"])
    federated = metrics["final"]["federated_eval"]
    assert federated["devices"] >= 1 and not federated["noisy"]  # privacy=none: exact, said so
    assert (tmp_path / "accuracy.png").is_file() and (tmp_path / "checkpoint.pt").is_file()


def test_reported_user_level_epsilon_is_opacus_rdp_for_the_mechanism_that_ran(user_level_runs):
    """Two rounds at q = 0.5 and the devices' evaluation (4 of 16 expected: q = 0.25), one ledger."""
    first, _, _, dirs = user_level_runs
    user = first["privacy"]["user_level"]
    accountant = RDPAccountant()
    accountant.history = [(user["noise_multiplier"], user["sample_rate"], 2), (user["noise_multiplier"], 0.25, 1)]
    assert user["rounds"] == 2 and user["evaluation_releases"] == 1 and user["releases"] == 3
    assert user["sample_rate"] == 0.5 and user["clipping_norm"] == 0.5
    assert user["epsilon"] == pytest.approx(accountant.get_epsilon(user["delta"]), rel=1e-9)
    assert 19.0 < user["epsilon"] <= 20.0  # calibrated to spend the budget over the planned rounds and evaluation
    assert first["rounds"][0]["epsilon"] < first["rounds"][1]["epsilon"] < user["epsilon"]
    assert first["final"]["federated_eval"]["noisy"]
    saved = json.loads((dirs[0] / "metrics.json").read_text())
    assert saved["privacy"]["user_level"]["epsilon"] == pytest.approx(user["epsilon"])


def test_resume_continues_round_numbers_and_the_privacy_ledger(user_level_runs):
    first, resumed, _, dirs = user_level_runs
    z = first["privacy"]["user_level"]["noise_multiplier"]
    assert resumed["privacy"]["user_level"]["noise_multiplier"] == z  # never recalibrated on resume
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4]
    assert resumed["rounds"][:2] == first["rounds"]
    accountant = RDPAccountant()  # the first run's evaluation stays in the ledger the resumed run continues
    accountant.history = [(z, 0.5, 2), (z, 0.25, 1), (z, 0.5, 2), (z, 0.25, 1)]
    assert resumed["privacy"]["user_level"]["rounds"] == 4
    assert resumed["privacy"]["user_level"]["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert load_checkpoint(dirs[1] / "checkpoint.pt").round == 4
    # The resumed run drew fresh noise: no generator state was saved, and the default source is the OS.
    assert "rng" not in torch.load(dirs[0] / "checkpoint.pt", weights_only=True)
    assert resumed["privacy"]["noise"] == "secure" and "warning" not in resumed["privacy"]


def test_training_stops_before_the_round_that_would_pass_the_budget(user_level_runs):
    _, _, exhausted, dirs = user_level_runs
    user = exhausted["privacy"]["user_level"]
    assert exhausted["stopped_early"].startswith(f"stopped before round {user['rounds'] + 1}")
    assert 4 < user["rounds"] < 50 and user["epsilon"] <= 40.0
    ledger = PrivacyLedger()
    ledger.load_state_dict(load_checkpoint(dirs[2] / "checkpoint.pt").ledger)
    assert ledger.epsilon(delta=1e-5) == pytest.approx(user["epsilon"], rel=1e-9)
    assert ledger.epsilon_after(noise_multiplier=user["noise_multiplier"], sample_rate=0.5, delta=1e-5,
                                accountant="rdp") > 40.0


@pytest.mark.parametrize("users_per_message", [1, 5])
def test_node_slots_play_the_users_the_server_samples(compose_config, tmp_path, users_per_message):
    metrics = tiny_simulation(compose_config, tmp_path, "privacy=none", "simulation.rounds=2", "simulation.nodes=4",
                              "simulation.sample_rate=1.0", f"simulation.users_per_message={users_per_message}")
    for row in metrics["rounds"]:
        assert row["sampled"] == 16  # every user of the population, not every node
        assert row["replies"] == 16 and row["skipped_busy"] == 0 and row["failed"] == 0  # four slots take them in turn
    federated = metrics["final"]["federated_eval"]  # the slots also score sampled users, each on its own
    assert federated["answered"] >= 1 and federated["devices"] == federated["answered"] and 0.0 <= federated["top1"] <= 1.0

