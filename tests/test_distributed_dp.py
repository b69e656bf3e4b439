"""privacy=distributed: the devices noise their own SecAgg+ shares; the server decodes a noisy sum, and nothing else."""

import dataclasses
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from client.secagg_client import SecureUpdateError, distributed_plan, secure_contribution
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from privacy.contribution import contribution_sensitivity
from privacy.distributed_accounting import ddg_epsilon
from privacy.distributed_dp import DistributedDiscreteGaussian, decode, encode, plan_distributed, rotate, unrotate
from privacy.distributed_release import DistributedLedger, DistributedRelease, plan_run
from privacy.errors import PrivacyConfigError
from protocol.instructions import (
    DistributedInstructions,
    TrainInstructions,
    UserLevelInstructions,
    to_config_items,
)
from protocol.reply_layout import STATISTICS_ARRAY
from server.addressing import Addressing
from server.aggregation import make_strategy
from server.grid_transport import GridTransport
from server.round import FederatedRound
from server.secagg import SecureAggregator
from server.settings import SecAggSettings, StrategySettings, settings_from_config
from simulations.federation.device_data import simulated_data, simulated_device_data
from simulations.population.population import PopulationConfig
from tests.helpers import InProcessGrid, tiny_simulation
from validation.config import ConfigError

CLIP = 0.5
MODEL = ModelConfig(dropout=0.0, head_dropout=0.0)
DATA = simulated_data(PopulationConfig(seed=0, num_users=20, days=7), window=16)


def _arrays() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in PreferenceLSTM(MODEL).state_dict().items()}


def _dimension(arrays) -> int:
    return sum(v.size for v in arrays.values()) + 3


def _share(plan, seed: int = 12345) -> DistributedInstructions:
    return DistributedInstructions(plan, seed)


def _instructions(plan, *, announced: float | None = None, **changes) -> TrainInstructions:
    z = plan.noise_multiplier if announced is None else announced
    base = dict(round=1, seed=0, model=MODEL, train=LocalTrainConfig(batch_size=8, max_examples=16), data=DATA,
                clipping_norm=CLIP, run_key="test-run", planned_rounds=1,
                user_level=UserLevelInstructions(z, 1.0, 1e-5), distributed=_share(plan))
    return TrainInstructions(**(base | changes))


def _context(user_id: int) -> Context:
    return Context(run_id=1, node_id=0, node_config={"partition-id": user_id}, state=RecordDict(), run_config={})


def _check_in(grid, nodes, instructions) -> list[int]:
    """The server's check-in (``GridTransport.check_in``) of ``nodes`` for ``instructions``' round."""
    transport = GridTransport(SimpleNamespace(grid=grid), Addressing(slots=False, users_per_message=1), nodes,
                              num_users=len(nodes), timeout_s=5)
    return transport.check_in(instructions.round, to_config_items(instructions), nodes)


def _flat(contribution: dict, names: list[str]) -> np.ndarray:
    return np.concatenate([contribution[k].reshape(-1) for k in [*names, STATISTICS_ARRAY]])


# ------------------------------------------------------------------------------------------------ the encoding
def test_the_rotation_is_orthonormal_and_undone_exactly():
    x = np.random.default_rng(0).normal(size=1000)
    y = rotate(x, 7, 1024)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x))
    np.testing.assert_allclose(unrotate(y, 7, 1000), x, atol=1e-12)
    assert not np.allclose(rotate(x, 8, 1024), y)  # the seed matters


def test_the_decoded_sum_carries_the_survivors_noise_and_nothing_wraps_for_aligned_contributions():
    """50 identical contributions of the largest norm (the worst case for the modulus): the decoded sum is the exact
    sum plus noise of the predicted variance per coordinate."""
    plan = plan_distributed(dimension=4000, sensitivity=1.0, noise_multiplier=1.0, min_survivors=40,
                            max_contributors=50)
    assert plan.wrap_probability() <= 1e-6
    x = np.random.default_rng(1).normal(size=4000)
    x /= np.linalg.norm(x)
    total = np.zeros(plan.padded, dtype=np.int64)
    for _ in range(50):
        total = np.mod(total + encode(x, plan, 99), plan.modulus)
    error = decode(total, plan, 99) - 50 * x
    predicted = 50 * plan.device_variance / plan.scale**2  # rounding adds < 50 / (4 gamma^2): negligible here
    assert error.var() == pytest.approx(predicted, rel=0.1)
    assert np.max(np.abs(error)) < 8 * np.sqrt(predicted)


def test_a_device_refuses_a_contribution_above_its_bound():
    plan = plan_distributed(dimension=10, sensitivity=1.0, noise_multiplier=1.0, min_survivors=2, max_contributors=2)
    with pytest.raises(ValueError, match="clip it first"):
        encode(np.full(10, 1.0), plan, 1)


def test_a_plan_that_no_modulus_holds_is_refused_naming_what_to_change():
    with pytest.raises(ValueError, match="lower the contributors per round"):
        plan_distributed(dimension=2**20, sensitivity=1.0, noise_multiplier=50.0, min_survivors=2,
                         max_contributors=2**20)


# ---------------------------------------------------------------------------------- the curious server, for real
def test_the_curious_server_estimates_one_device_of_two_with_the_mechanisms_error(flower_task_identity, tmp_path):
    """Two devices in a real SecAgg+ round (Flower's protocol, the simulation's ClientApp). The server knows device
    B's contribution exactly (say B colludes) and subtracts it from the sum it unmasked: its estimate of A's
    contribution is off by the two noise shares, variance sigma^2 = 2 sigma_dev^2 per coordinate, not by zero."""
    arrays = _arrays()
    plan = plan_distributed(dimension=_dimension(arrays), sensitivity=contribution_sensitivity(CLIP),
                            noise_multiplier=1.0, min_survivors=2, max_contributors=2)
    instructions = _instructions(plan, device_dir=str(tmp_path))  # q = 1: both devices' coins join them
    nodes = [101, 102]
    grid = InProcessGrid(nodes)
    assert _check_in(grid, nodes, instructions) == nodes
    noisy, counts = SecureAggregator(SecAggSettings(), timeout_s=5).sum_shares(
        grid, nodes, arrays, to_config_items(instructions), modulus=plan.modulus)
    assert counts.contributors == 2 and counts.halted is None
    names = list(arrays)
    a, b = (_flat(secure_contribution(instructions, arrays, _context(i), simulated_device_data), names) for i in (0, 1))
    assert np.linalg.norm(a) > 0.1 * CLIP and np.linalg.norm(b) > 0.1 * CLIP  # both trained
    error = decode(noisy, plan, instructions.distributed.rotation_seed) - b - a
    sigma_sq = 2 * plan.device_variance / plan.scale**2
    assert error.var() == pytest.approx(sigma_sq, rel=0.1)
    assert abs(error.mean()) < 5 * np.sqrt(sigma_sq / error.size)


# ------------------------------------------------------------------------------------------------ the device
def test_a_device_decides_by_its_own_coin_once_and_sends_no_share_to_a_round_it_did_not_join(flower_task_identity,
                                                                                              tmp_path):
    """The server cannot re-roll a device's coin by asking again, nor pull a device that said no into the sum."""
    arrays = _arrays()
    plan = plan_distributed(dimension=_dimension(arrays), sensitivity=contribution_sensitivity(CLIP),
                            noise_multiplier=1.0, min_survivors=2, max_contributors=20)
    nodes = list(range(101, 121))
    grid = InProcessGrid(nodes)
    half = _instructions(plan, device_dir=str(tmp_path),
                         user_level=UserLevelInstructions(plan.noise_multiplier, 0.5, 1e-5))
    first = _check_in(grid, nodes, half)
    assert 1 <= len(first) <= 19  # Binomial(20, 0.5): outside with probability 2e-6
    assert all(_check_in(grid, nodes, half) == first for _ in range(5))  # asked again: the same answers
    later = _check_in(grid, nodes, dataclasses.replace(half, round=2))
    assert later != first or _check_in(grid, nodes, dataclasses.replace(half, round=3)) != first  # fresh coins
    every = _instructions(plan, device_dir=str(tmp_path), round=4)  # q = 1 for round 4, asked of nodes 101 and 102
    assert _check_in(grid, nodes[:2], every) == nodes[:2]
    noisy, counts = SecureAggregator(SecAggSettings(), timeout_s=5).sum_shares(
        grid, nodes[:3], arrays, to_config_items(every), modulus=plan.modulus)  # 103 never checked in to round 4
    assert noisy is not None and counts.contributors == 2  # 103 refused ("not-checked-in") and is left out


def test_a_device_refuses_a_share_with_less_noise_than_the_run_announced():
    plan = plan_distributed(dimension=100, sensitivity=contribution_sensitivity(CLIP), noise_multiplier=1.0,
                            min_survivors=4, max_contributors=10)
    distributed_plan(_instructions(plan))  # as announced: accepted
    with pytest.raises(SecureUpdateError, match="below the"):
        distributed_plan(_instructions(plan, announced=1.5 * plan.noise_multiplier))
    smaller = DistributedInstructions(dataclasses.replace(plan, device_variance=plan.device_variance // 4), 12345)
    with pytest.raises(SecureUpdateError, match="below the"):
        distributed_plan(_instructions(plan, distributed=smaller))
    with pytest.raises(SecureUpdateError, match="announces no noise multiplier"):
        distributed_plan(_instructions(plan, user_level=None))
    wrong_bound = DistributedInstructions(dataclasses.replace(plan, sensitivity=2 * plan.sensitivity), 12345)
    with pytest.raises(SecureUpdateError, match="sized for sensitivity"):
        distributed_plan(_instructions(plan, distributed=wrong_bound))


# ------------------------------------------------------------------------------------------ the server's release
def test_a_round_with_fewer_survivors_than_planned_releases_nothing_and_is_charged(flower_task_identity, tmp_path):
    arrays = _arrays()
    plan = plan_distributed(dimension=_dimension(arrays), sensitivity=contribution_sensitivity(CLIP),
                            noise_multiplier=1.0, min_survivors=3, max_contributors=4)
    ledger = DistributedLedger()
    mechanism = DistributedRelease(plan, CLIP, 0.5, 6, ledger, 1e-5, 8.0)
    federated_round = FederatedRound(make_strategy(StrategySettings()), mechanism,
                                     sampling_rng=np.random.default_rng(0), sample_rate=0.5)
    nodes = [101, 102, 103]
    grid = InProcessGrid(nodes, silent={103})
    aggregator = SecureAggregator(SecAggSettings(), timeout_s=5)
    instructions = _instructions(plan, device_dir=str(tmp_path))
    assert _check_in(grid, nodes, instructions) == [101, 102]  # 103 is offline
    share = instructions.distributed
    outcome = federated_round._distributed_outcome(1, arrays, nodes, nodes, share, lambda: aggregator.sum_shares(
        grid, nodes, arrays, to_config_items(instructions), modulus=plan.modulus))
    assert "fewer than the 3" in outcome.halted and outcome.replies == 2
    assert all(np.array_equal(outcome.arrays[k], arrays[k]) for k in arrays)  # a zero step
    assert ledger.steps == 1  # charged all the same


def test_the_ledger_composes_what_the_accountant_computes_and_survives_a_checkpoint():
    plan = plan_distributed(dimension=8000, sensitivity=1.0, noise_multiplier=1.2, min_survivors=90,
                            max_contributors=150)
    ledger = DistributedLedger()
    for _ in range(10):
        ledger.record(plan, sample_rate=0.1)
    expected = ddg_epsilon(sensitivity_l2=plan.norm_bound, sigma_sq=plan.device_variance, survivors=90,
                           dimension=plan.padded, sample_rate=0.1, steps=10, delta=1e-6)
    assert ledger.epsilon(delta=1e-6) == pytest.approx(expected, rel=1e-9)
    copy = DistributedLedger()
    copy.load_state_dict(ledger.state_dict())
    assert copy.history == ledger.history and copy.steps == 10


def test_the_run_plan_meets_the_budget_with_its_own_integer_parameters():
    plan = plan_run(target_epsilon=2.0, delta=1e-6, sample_rate=0.1, rounds=20, population=10_000, clipping_norm=CLIP,
                    dimension=7995)
    ledger = DistributedLedger()
    ledger.record(plan, sample_rate=0.1, steps=20)
    assert 1.9 <= ledger.epsilon(delta=1e-6) <= 2.0
    assert plan.wrap_probability() <= 1e-6 and plan.min_survivors < 1000 < plan.max_contributors


def test_more_minimum_survivors_than_a_round_expects_is_refused_naming_the_key():
    with pytest.raises(PrivacyConfigError, match="privacy.min_survivors=200 is above the expected 100"):
        plan_run(target_epsilon=2.0, delta=1e-6, sample_rate=0.1, rounds=20, population=1000, clipping_norm=CLIP,
                 dimension=7995, min_survivors=200)


@pytest.mark.parametrize("overrides,message", [
    (["privacy=distributed"], "privacy=distributed needs secagg.enabled=true"),
    (["privacy=distributed", "secagg.enabled=true", "privacy.noise=seeded"], "needs privacy.noise=secure"),
    (["privacy=distributed", "secagg.enabled=true", "privacy.clipping=adaptive"], "needs privacy.clipping=fixed"),
    (["privacy=distributed", "secagg.enabled=true", "privacy.accountant=prv"], "needs privacy.accountant=rdp"),
    (["privacy=user", "privacy.min_survivors=1"], "privacy.min_survivors"),
])
def test_impossible_distributed_configs_fail_naming_the_key(compose_config, overrides, message):
    with pytest.raises((PrivacyConfigError, ConfigError), match=message):
        settings_from_config(compose_config(*overrides))


# ---------------------------------------------------------------------------------------- a run, end to end
@pytest.mark.slow
def test_a_distributed_run_in_flowers_simulation_engine_reports_whom_its_epsilon_holds_against(compose_config, tmp_path):
    metrics = tiny_simulation(compose_config, tmp_path, "privacy=distributed", "secagg.enabled=true",
                              "simulation.nodes=0", "simulation.rounds=2", "privacy.delta=1e-3",
                              "simulation.final_eval_clients=0")
    privacy = metrics["privacy"]
    user = privacy["user_level"]
    assert privacy["mode"] == "distributed" and user["rounds"] == 2 and user["releases"] == 2
    assert 0 < user["epsilon"] <= user["target_epsilon"]
    assert user["distributed"]["wrap_probability_bound"] <= 1e-6
    assert any("whatever the server does" in note and "The server sees who joined" in note for note in privacy["notes"])
    assert set(user["distributed"]["epsilon_against_server"]) == {"1"}  # q·rounds = 0.5·2 = 1 joined round expected


def test_the_distributed_option_composes_with_secure_aggregation(compose_config):
    settings = settings_from_config(compose_config("privacy=distributed", "secagg.enabled=true", "simulation.nodes=0"))
    assert settings.privacy.distributed and settings.privacy.user_level


def test_a_simulation_whose_plan_cannot_work_is_refused_before_it_starts(compose_config):
    """The check the command below makes before anything starts, in this process."""
    from simulations.federation.simulation_settings import check_simulation_can_start, simulated_settings

    settings = simulated_settings(compose_config("privacy=distributed", "secagg.enabled=true", "simulation.nodes=0",
                                                 "privacy.min_survivors=500"))
    with pytest.raises(PrivacyConfigError, match="privacy.min_survivors=500 is above the expected 100"):
        check_simulation_can_start(settings)


@pytest.mark.slow  # the real command in a child process: seconds of imports (torch, Opacus) before it plans
def test_a_plan_that_cannot_work_stops_the_run_before_anything_starts_with_exit_2():
    import subprocess
    import sys

    from tests.helpers import ROOT

    result = subprocess.run([sys.executable, "-m", "simulations.run", "privacy=distributed", "secagg.enabled=true",
                             "simulation.nodes=0", "privacy.min_survivors=500"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "privacy.min_survivors=500 is above the expected 100" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_the_wrap_bound_holds_where_wrapping_is_common_enough_to_count():
    """At a modulus too small on purpose, the measured share of sums that wrap stays below the plan's bound (which
    the real plans keep <= 1e-6, too rare to count)."""
    plan = DistributedDiscreteGaussian(64, 1.0, 50.0, 9, 1200, 4, 4)  # m = 512 for a noise std of 69 over 4 shares
    bound = plan.wrap_probability()
    assert 0.01 < bound < 1.0
    rng = np.random.default_rng(3)
    wrapped = 0
    for trial in range(1000):
        xs = [v / np.linalg.norm(v) for v in rng.normal(size=(4, 64))]
        total = np.zeros(plan.padded, dtype=np.int64)
        for x in xs:
            total = np.mod(total + encode(x, plan, trial), plan.modulus)
        centred = np.mod(total + plan.modulus // 2, plan.modulus) - plan.modulus // 2  # as decode centres it
        exact = rotate(np.sum(xs, axis=0), trial, plan.padded) * plan.scale
        wrapped += bool(np.max(np.abs(centred - exact)) > plan.modulus / 2)  # else off by noise + rounding only
    assert 0 < wrapped / 1000 <= bound  # measured about 0.013 against a bound of 0.37 (none in 1000: p ~ 2e-6)


def test_the_device_counts_a_distributed_run_as_the_runs_own_ledger_does_not_as_a_gaussian():
    """The device's policy and lifetime ledger compose what each run announced; a distributed run is its shares'
    mechanism (the looser subsampling bound), never the Gaussian at the same noise multiplier, which would understate
    it."""
    from client.privacy_policy import run_history, run_user_epsilon
    from privacy.accounting import fast_rdp_epsilon

    plan = plan_run(target_epsilon=2.0, delta=1e-6, sample_rate=0.1, rounds=20, population=10_000, clipping_norm=CLIP,
                    dimension=7995)
    instructions = _instructions(plan, planned_rounds=20,
                                 user_level=UserLevelInstructions(plan.noise_multiplier, 0.1, 1e-6))
    ledger = DistributedLedger()
    ledger.record(plan, sample_rate=0.1, steps=20)
    device, run = run_user_epsilon(instructions), ledger.epsilon(delta=1e-6)
    gaussian = fast_rdp_epsilon([(plan.noise_multiplier, 0.1, 20)], delta=1e-6)
    assert run <= device <= 1.05 * run  # the device's orders are Opacus', the run's integers: close, never below
    assert gaussian < 0.9 * device
    assert len(run_history(instructions)[0]) == 6


@pytest.mark.parametrize("key,value,rule", [("bits", 40, "bits must be in [1, 31]"),
                                            ("device-variance", 0, "device_variance must be in [1, 16777216]"),
                                            ("min-survivors", 1, "min_survivors must be in [2, max_contributors]")])
def test_a_device_refuses_share_parameters_no_honest_plan_has(key, value, rule):
    from protocol.instructions import InstructionError, from_config_items

    plan = plan_distributed(dimension=100, sensitivity=contribution_sensitivity(CLIP), noise_multiplier=1.0,
                            min_survivors=4, max_contributors=10)
    items = {**to_config_items(_instructions(plan)), f"distributed.plan.{key}": value}
    with pytest.raises(InstructionError, match=re.escape(f"distributed.plan: {rule}")):
        from_config_items(items)


def test_a_check_in_reply_holds_one_bool_and_a_check_in_without_share_parameters_gets_only_a_code(flower_task_identity,
                                                                                                 tmp_path):
    """What leaves a device at check-in: ``check-in.joined`` and nothing else; a malformed check-in (a server that
    sends no share parameters) gets the reason code alone, no text."""
    from flwr.app import ConfigRecord, Message

    from simulations.federation.simulation_client_app import app

    plan = plan_distributed(dimension=100, sensitivity=contribution_sensitivity(CLIP), noise_multiplier=1.0,
                            min_survivors=2, max_contributors=10)

    def ask(instructions):
        message = Message(RecordDict({"config": ConfigRecord(to_config_items(instructions))}), dst_node_id=1,
                          message_type="query.check_in")
        return app(message, _context(0))

    reply = ask(_instructions(plan, device_dir=str(tmp_path)))
    assert not reply.has_error() and list(reply.content.keys()) == ["check-in"]
    assert dict(reply.content.config_records["check-in"]) == {"joined": True}  # q = 1
    refused = ask(_instructions(plan, device_dir=str(tmp_path), distributed=None))
    assert refused.has_error() and refused.error.reason == "bad-instructions"


def test_a_deployment_whose_fewest_nodes_cannot_hold_the_plan_is_refused_before_it_starts():
    from server.preflight import check_can_start
    from server.server_app import compose_settings

    settings = compose_settings("deploy", ["privacy=distributed", "secagg.enabled=true", "deployment.min_nodes=3",
                                           "simulation.sample_rate=1.0", "privacy.min_survivors=5"])
    with pytest.raises(PrivacyConfigError, match="privacy.min_survivors=5 is above the expected 3"):
        check_can_start(settings)
