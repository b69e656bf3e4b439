import subprocess
import sys

import pytest

from server.settings import settings_from_config
from validation.config import ConfigError
from tests.helpers import ROOT


@pytest.mark.parametrize("group,options", [
    ("population", ["default", "small"]), ("model", ["bilstm", "causal"]), ("privacy", ["none", "record", "user", "both"]),
    ("strategy", ["fedavg", "fedadam"]), ("simulation", ["default"]),
])
def test_every_config_group_option_composes_and_validates(compose_config, group, options):
    for option in options:
        settings = settings_from_config(compose_config(f"{group}={option}"))
        assert settings.population.num_users >= 1


@pytest.mark.parametrize("strategy", ["fedmedian", "fedtrimmedavg"])
def test_robust_strategies_compose_without_user_level_dp(compose_config, strategy):
    assert settings_from_config(compose_config(f"strategy={strategy}", "privacy=none")).strategy.name == strategy


@pytest.mark.parametrize("overrides,message", [
    (["privacy.target_epsilon=0"], "privacy.target_epsilon must be > 0"),
    (["privacy.target_epsilon=-1"], "privacy.target_epsilon must be > 0"),
    (["privacy.delta=0.001"], "privacy.delta must be < 1/population.num_users"),
    (["simulation.sample_rate=0"], "simulation.sample_rate must be in (0, 1]"),
    (["simulation.sample_rate=1.5"], "simulation.sample_rate must be in (0, 1]"),
    (["strategy.name=fedprox"], "strategy.name must be one of"),
    (["strategy=fedmedian"], "cannot be combined with user-level DP"),
    (["+population.users=5"], "Unknown key population.users"),
    (["train.lr=fast"], "train.lr must be of type float"),
    (["privacy.mode=partial"], "privacy.mode must be one of"),
    (["privacy.accountant=gdp"], "privacy.accountant must be one of"),
    (["resume=true"], "resume=true needs checkpoint=PATH"),
    (["simulation.users_per_message=0"], "simulation.users_per_message must be >= 1"),
    (["privacy.clipping=median"], "privacy.clipping must be one of"),
    (["privacy.clipping_quantile=1.0"], "privacy.clipping_quantile must be in (0, 1)"),
    (["privacy.clipping_learning_rate=0"], "privacy.clipping_learning_rate must be in (0, 10]"),
])
def test_impossible_configs_fail_naming_the_key_and_range(compose_config, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        settings_from_config(compose_config(*overrides))


def test_a_deployments_delta_is_checked_against_its_nodes_not_a_simulated_population():
    """On a real server N is the nodes connected at round 1 (at least deployment.min_nodes), not population.num_users,
    a simulation setting the operator never set."""
    from server.server_app import compose_settings

    with pytest.raises(ValueError, match=r"privacy.delta must be < 1/deployment.min_nodes = 0.333333 \(the fewest nodes"):
        compose_settings("deploy", ["privacy.delta=0.4"])
    assert compose_settings("deploy", ["privacy.delta=0.01", "population.num_users=1000000"]).privacy.delta == 0.01


@pytest.mark.slow  # the real command in a child process: seconds of imports; the same rule in this process above
def test_entry_point_rejects_a_bad_config_before_any_training():
    result = subprocess.run(
        [sys.executable, "-m", "simulations.run", "privacy.target_epsilon=0", "hydra.run.dir=/tmp/fedpref-never-created"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "privacy.target_epsilon must be > 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_errors_are_value_errors_with_the_type_named():
    assert issubclass(ConfigError, ValueError)
