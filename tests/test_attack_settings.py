"""simulation.attack and strategy=krum in the composed config: validated before anything runs, refused on a real server."""

import pytest

from protocol.instructions import AttackInstructions
from server.settings import settings_from_config
from validation.config import ConfigError


@pytest.mark.parametrize("kind", ["scale", "sign_flip", "nan_arrays", "missing_array", "extra_array", "label_flip"])
def test_every_attack_kind_composes_in_simulation_and_is_sent_to_clients(compose_config, kind):
    settings = settings_from_config(compose_config("privacy=none", f"simulation.attack.kind={kind}",
                                                   "simulation.attack.fraction=0.2"))
    assert settings.simulation.attack.instructions() == AttackInstructions(kind=kind, fraction=0.2, scale=10.0)


def test_the_default_config_attacks_nobody_and_sends_nothing(compose_config):
    settings = settings_from_config(compose_config())
    assert settings.simulation.attack.kind == "none" and settings.simulation.attack.instructions() is None
    assert settings_from_config(compose_config("simulation.attack.kind=scale")).simulation.attack.instructions() is None


@pytest.mark.parametrize("overrides,message", [
    (["simulation.attack.kind=backdoor"], "simulation.attack.kind must be one of"),
    (["simulation.attack.fraction=1.5"], r"simulation.attack.fraction must be in \[0, 1\]"),
    (["simulation.attack.fraction=-0.1"], r"simulation.attack.fraction must be in \[0, 1\]"),
    (["simulation.attack.scale=inf"], "simulation.attack.scale must be"),
    (["simulation.attack.scale=nan"], "simulation.attack.scale must be"),
    (["+simulation.attack.target=3"], "Unknown key simulation.attack.target"),
    (["strategy=krum", "strategy.num_malicious_nodes=-1"], "strategy.num_malicious_nodes must be >= 0"),
    (["strategy=krum"], "cannot be combined with user-level DP"),
    (["simulation.attack.kind=scale", "privacy=user", "secagg.enabled=true", "simulation.nodes=0"],
     "simulation.attack needs plain aggregation"),
])
def test_impossible_attack_or_krum_configs_fail_naming_the_key(compose_config, overrides, message):
    with pytest.raises(ValueError, match=message):
        settings_from_config(compose_config(*overrides))


@pytest.mark.parametrize("overrides", [["deployment=real"], ["deployment.engine=real"]])  # slots are refused there too
def test_a_real_server_refuses_to_tell_devices_to_attack(compose_config, overrides):
    with pytest.raises(ConfigError, match="simulation-only test, and a real server must never tell devices to attack"):
        settings_from_config(compose_config(*overrides, "simulation.nodes=0", "simulation.attack.kind=sign_flip",
                                            "simulation.attack.fraction=0.1"))


def test_the_real_server_config_refuses_attacks(compose_config):
    from hydra import compose, initialize_config_dir

    from tests.helpers import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        assert settings_from_config(compose(config_name="deploy")).deployment.engine == "real"
        with pytest.raises(ConfigError, match="deployment.engine='real'"):
            settings_from_config(compose(config_name="deploy", overrides=["simulation.attack.kind=nan_arrays"]))


def test_krum_composes_without_user_level_dp(compose_config):
    settings = settings_from_config(compose_config("strategy=krum", "privacy=none"))
    assert settings.strategy.name == "krum" and settings.strategy.num_malicious_nodes == 2
