"""Secure aggregation (Flower's SecAgg+) combined with user-level DP: same mechanism, same model code, only the sum seen."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from client.secagg_client import SecAggClient, SecureUpdateError
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from privacy.contribution import STATISTIC_WEIGHT, contribution_sensitivity
from privacy.mechanisms import clip_update, global_norm
from protocol.instructions import DataInstructions, TrainInstructions, to_config_items
from protocol.records import ARRAY_NAMES_KEY
from protocol.reply_layout import STATISTICS_ARRAY
from server.aggregation import aggregate, make_strategy
from server.checkpoint import load_checkpoint
from server.replies import Contribution
from server.secagg import (
    SecureAggregator,
    SecureSum,
    check_unmasked,
    quantisation_clipping_range,
    quantisation_error_bound,
    release_secure_sum,
)
from server.settings import SecAggSettings, StrategySettings, settings_from_config
from simulations.federation.device_data import simulated_data, simulated_device_data
from simulations.population.population import PopulationConfig
from validation.config import ConfigError
from tests.helpers import InProcessGrid, gaussian_mechanism

DATA = simulated_data(PopulationConfig(seed=0, num_users=20, days=7), window=16)


def _global_arrays() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in PreferenceLSTM().state_dict().items()}


def _random_updates(rng, reference, count, norm):
    updates = []
    for _ in range(count):
        delta = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in reference.items()}
        updates.append(clip_update(delta, norm)[0])
    return updates


# ---------------------------------------------------------------------------------------- quantisation range
def test_quantisation_range_clips_no_coordinate_of_an_update_within_the_clipping_norm():
    c = 0.5
    r = quantisation_clipping_range(c)
    spike = np.zeros(1000)
    spike[7] = -c  # all of the norm in one coordinate: the largest coordinate an update clipped to C can have
    spread = clip_update({"w": np.random.default_rng(0).normal(size=1000)}, c)[0]["w"].astype(np.float64)  # as sent
    for update in (spike, spread):
        assert np.max(np.abs(update)) <= r  # |x_j| <= ||x||_2 <= C < r
        back = dequantize(quantize([update], r, 2**22), r, 2**22)[0]
        assert np.max(np.abs(back - update)) <= quantisation_error_bound(r, 2**22)


def test_a_quantisation_range_below_the_clipping_norm_would_clip_a_second_time():
    c = 0.5
    spike = np.zeros(10)
    spike[0] = c
    back = dequantize(quantize([spike], c / 2, 2**22), c / 2, 2**22)[0]
    assert back[0] == pytest.approx(c / 2, abs=1e-6)  # what setting the range from C avoids


def test_error_bound_is_the_quantisation_step():
    assert quantisation_error_bound(0.5, 2**22) == pytest.approx(1.0 / 2**22)
    assert SecureAggregator(SecAggSettings(quantization_range=4096), timeout_s=1).error_bound(0.5) == pytest.approx(
        2 * 0.5 * (1 + 1e-6) / 4096)


# ------------------------------------------------------------------------------------- one mechanism, two paths
STATISTICS = np.array([1.0, 1.0, 0.5], dtype=np.float64) * STATISTIC_WEIGHT * 0.5


def test_noise_on_the_secure_sum_equals_the_plain_dp_aggregate(flower_task_identity):
    current = _global_arrays()
    deltas = _random_updates(np.random.default_rng(1), current, 5, 0.5)
    dp = gaussian_mechanism(clipping_norm=0.5, noise_multiplier=0.8, expected_clients=4)
    contributions = [Contribution(i, d, STATISTICS.astype(np.float32)) for i, d in enumerate(deltas)]
    plain, plain_stats = aggregate(make_strategy(StrategySettings()), 1, current, contributions, mechanism=dp)
    total = {k: sum(d[k].astype(np.float64) for d in deltas) for k in current}
    same_noise = gaussian_mechanism(clipping_norm=0.5, noise_multiplier=0.8, expected_clients=4)  # same seeded draws
    secure, secure_stats, refused = release_secure_sum(
        make_strategy(StrategySettings()), 1, current, SecureSum(total, 5 * STATISTICS, 5, 5), mechanism=same_noise,
        sensitivity=same_noise.sensitivity)
    for k in current:
        np.testing.assert_allclose(secure[k], plain[k], atol=1e-6)
    assert refused is None and secure_stats.participants == pytest.approx(plain_stats.participants, abs=1e-6)


def test_noise_covers_the_quantised_contribution_not_just_its_bound(flower_task_identity):
    current = _global_arrays()
    d = sum(v.size for v in current.values()) + 3
    aggregator = SecureAggregator(SecAggSettings(), timeout_s=1)
    assert aggregator.sensitivity(0.5, d) == pytest.approx(contribution_sensitivity(0.5) + np.sqrt(d) * aggregator.error_bound(0.5))
    assert contribution_sensitivity(0.5) < aggregator.sensitivity(0.5, d) < contribution_sensitivity(0.5) * 1.001
    dp = gaussian_mechanism(clipping_norm=0.5, noise_multiplier=1.0, expected_clients=1)
    zero = SecureSum({k: np.zeros_like(v, dtype=np.float64) for k, v in current.items()}, np.zeros(3), 2, 2)
    with pytest.raises(ValueError, match="sensitivity must be >= the contribution's bound"):
        release_secure_sum(make_strategy(StrategySettings()), 1, current, zero, mechanism=dp, sensitivity=0.4)
    new, _, _ = release_secure_sum(make_strategy(StrategySettings()), 1, current, zero, mechanism=dp, sensitivity=0.8)
    noise = np.concatenate([(new[k] - current[k]).ravel() for k in current])
    assert np.std(noise) == pytest.approx(0.8, rel=0.02)


def test_a_round_without_a_secure_sum_still_releases_calibrated_noise(flower_task_identity):
    current = _global_arrays()
    dp = gaussian_mechanism(clipping_norm=0.5, noise_multiplier=1.0, expected_clients=2)
    halted = SecureAggregator(SecAggSettings(), timeout_s=1).sum_updates(None, [42], current, {}, clipping_norm=0.5)
    assert halted.total is None and halted.contributors == 0 and "at least 2" in halted.halted
    new, _, _ = release_secure_sum(make_strategy(StrategySettings()), 1, current, halted, mechanism=dp,
                                   sensitivity=dp.sensitivity)
    noise = np.concatenate([(new[k] - current[k]).ravel() for k in current]) * dp.expected_clients
    assert np.std(noise) == pytest.approx(dp.noise_multiplier * dp.sensitivity, rel=0.05)
    assert dp.ledger.steps == 1


def test_an_unmasked_weight_factor_other_than_contributors_times_t_is_refused():
    """The attack on Flower's workflow: it divides the unmasked sum by the summed weight factor, so one client that
    makes the total 1 (mod 2**32) scales the released sum by n·T against the same noise."""
    values = [np.full(4, 3 * 2**10, dtype=np.int64)]
    assert check_unmasked(3 * 2**12, values, 3, 2**12) is None
    assert "forged its weight" in check_unmasked(1, values, 3, 2**12)
    assert "outside [0, contributors × T" in check_unmasked(3 * 2**12, [np.array([0, 3 * 2**12 + 1])], 3, 2**12)
    # What Flower's stage would have released with factor 1: (sum) * T / factor, i.e. the sum times n·T / n.
    assert 2**12 / 1 == (3 * 2**12) * (2**12 / (3 * 2**12)) * 3 * 2**12 / (3 * 2**12)


# ------------------------------------------------------------------------------------------------- the client
def _fit_config(**changes) -> dict:
    instructions = TrainInstructions(round=1, seed=0, model=ModelConfig(), train=LocalTrainConfig(batch_size=8), data=DATA,
                                     clipping_norm=0.05)
    instructions = TrainInstructions(**(instructions.__dict__ | changes))
    return {**to_config_items(instructions), ARRAY_NAMES_KEY: ",".join(_global_arrays())}


def _context(user_id: int) -> Context:
    return Context(run_id=1, node_id=0, node_config={"partition-id": user_id}, state=RecordDict(), run_config={})


def test_secagg_client_sends_its_contribution_clipped_on_the_device_with_weight_one_and_no_metrics():
    current = _global_arrays()
    sent, weight, metrics = SecAggClient(_context(3), simulated_device_data).fit(list(current.values()), _fit_config())
    assert weight == 1 and metrics == {}
    update, statistics = sent[:-1], sent[-1]
    assert [u.shape for u in update] == [v.shape for v in current.values()] and statistics.shape == (3,)
    assert all(u.dtype == np.float64 for u in sent)  # quantised in float64 (float32 cannot hold 2**22 levels)
    norm = global_norm(dict(enumerate(update)))
    assert 0.0 < norm <= 0.05 * (1 + 1e-6)
    assert max(float(np.max(np.abs(u))) for u in sent) <= quantisation_clipping_range(0.05)
    assert statistics[0] == pytest.approx(STATISTIC_WEIGHT * 0.05)  # it took part


def test_secagg_client_refuses_a_round_without_user_level_clipping():
    current = _global_arrays()
    with pytest.raises(SecureUpdateError, match="needs user-level DP"):
        SecAggClient(_context(3), simulated_device_data).fit(list(current.values()), _fit_config(clipping_norm=None))


def test_secagg_client_refuses_arrays_it_cannot_name():
    current = _global_arrays()
    with pytest.raises(SecureUpdateError, match="must match"):
        SecAggClient(_context(3), simulated_device_data).fit(list(current.values())[:-1], _fit_config())


# ----------------------------------------------------------------------------- the protocol, in one process
NO_DROPOUT = ModelConfig(dropout=0.0, head_dropout=0.0)  # training identical whether or not a model is cached


def _secure_round(grid, nodes, clipping_norm=0.5, quantization=2**22):
    torch.manual_seed(0)
    current = {k: v.numpy().copy() for k, v in PreferenceLSTM(NO_DROPOUT).state_dict().items()}
    instructions = TrainInstructions(round=1, seed=0, model=NO_DROPOUT, train=LocalTrainConfig(batch_size=8, max_examples=16),
                                     data=DATA, clipping_norm=clipping_norm)
    aggregator = SecureAggregator(SecAggSettings(quantization_range=quantization), timeout_s=5)
    secure = aggregator.sum_updates(grid, nodes, current, to_config_items(instructions), clipping_norm=clipping_norm)
    config = {**to_config_items(instructions), ARRAY_NAMES_KEY: ",".join(current)}

    def update_of(user_id):
        sent, _, _ = SecAggClient(_context(user_id), simulated_device_data).fit(list(current.values()), config)
        return dict(zip([*current, STATISTICS_ARRAY], sent))

    return secure, update_of, aggregator.error_bound(clipping_norm)


def test_secure_sum_is_the_sum_of_the_clipped_updates_within_the_quantisation_error(flower_task_identity):
    nodes = [101, 102, 103, 104, 105]
    secure, update_of, step = _secure_round(InProcessGrid(nodes), nodes)
    updates = [update_of(i) for i in range(5)]
    assert secure.contributors == 5 and secure.halted is None
    for k in secure.total:
        exact = sum(u[k] for u in updates)
        assert np.max(np.abs(secure.total[k] - exact)) <= 5 * step  # each client's rounding error < one step
    exact_statistics = sum(u[STATISTICS_ARRAY] for u in updates)
    assert np.max(np.abs(secure.statistics - exact_statistics)) <= 5 * step


class ForgingGrid(InProcessGrid):
    """Node ``forger`` adds ``shift(n)`` to the first value of its masked vector (the weight factor, or with
    ``index`` the index-th coordinate of its first array) in the masking stage, n the number of sampled nodes."""

    def __init__(self, node_ids, forger, shift, index=0) -> None:
        super().__init__(node_ids)
        self.forger, self.shift, self.index = forger, shift, index

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.common import bytes_to_ndarray, ndarray_to_bytes
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            record = reply.content.config_records.get(RECORD_KEY_CONFIGS) if not reply.has_error() else None
            if reply.metadata.src_node_id == self.forger and record is not None and Key.MASKED_PARAMETERS in record:
                arrays = [bytes_to_ndarray(b) for b in record[Key.MASKED_PARAMETERS]]
                position = 0 if self.index == 0 else 1
                flat = arrays[position].reshape(-1)
                flat[max(self.index - 1, 0) if position else 0] = (int(flat[max(self.index - 1, 0) if position else 0])
                                                                   + self.shift(len(self.contexts))) % 2**32
                record[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(a) for a in arrays]
        return replies


def test_a_client_forging_its_weight_factor_makes_the_round_release_nothing(flower_task_identity):
    """One client makes the unmasked total weight 1 (mod 2**32): Flower's stage would have released the honest sum
    times n·T; ours refuses the round."""
    nodes = [101, 102, 103, 104, 105]
    grid = ForgingGrid(nodes, 103, lambda n: (1 - n * 2**22) % 2**32)
    secure, _, _ = _secure_round(grid, nodes)
    assert secure.total is None and "forged its weight" in secure.halted and secure.contributors == 5


def test_a_client_pushing_a_coordinate_out_of_range_makes_the_round_release_nothing(flower_task_identity):
    nodes = [101, 102, 103, 104, 105]
    grid = ForgingGrid(nodes, 102, lambda n: n * 2**22, index=1)
    secure, _, _ = _secure_round(grid, nodes)
    assert secure.total is None and "outside [0, contributors × T" in secure.halted


def test_a_node_offline_at_setup_leaves_the_round_to_the_others(flower_task_identity):
    nodes = [101, 102, 103, 104, 105]
    secure, update_of, step = _secure_round(InProcessGrid(nodes, silent={103}), nodes)
    assert secure.contributors == 4 and secure.dropped == 1 and secure.halted is None
    others = [update_of(i) for i in (0, 1, 3, 4)]
    for k in secure.total:
        assert np.max(np.abs(secure.total[k] - sum(u[k] for u in others))) <= 4 * step


def test_flowers_own_workflow_halts_when_a_node_is_offline_at_setup(flower_task_identity, monkeypatch):
    """Why ``server.secagg`` subclasses SecAggPlusWorkflow; if Flower fixes this, the subclass can go."""
    from flwr.server.workflow import SecAggPlusWorkflow

    import server.secagg

    monkeypatch.setattr(server.secagg, "_SecAggPlus", SecAggPlusWorkflow)
    nodes = [101, 102, 103, 104, 105]
    secure, _, _ = _secure_round(InProcessGrid(nodes, silent={103}), nodes)
    assert secure.total is None and secure.halted


def test_a_node_failing_mid_protocol_is_unmasked_and_left_out(flower_task_identity):
    nodes = [101, 102, 103, 104, 105]
    broken = {103: {}}  # no data source: its fit raises in the masking stage, after it shared its keys
    secure, update_of, step = _secure_round(InProcessGrid(nodes, node_configs=broken), nodes)
    assert secure.contributors == 4
    others = [update_of(i) for i in (0, 1, 3, 4)]
    for k in secure.total:
        assert np.max(np.abs(secure.total[k] - sum(u[k] for u in others))) <= 4 * step


# ---------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides,message", [
    (["secagg.enabled=true", "secagg.num_shares=4"], "secagg.num_shares must be an odd number >= 3"),
    (["secagg.enabled=true", "secagg.reconstruction_threshold=3"], "secagg.reconstruction_threshold must be in [2, "),
    (["secagg.enabled=true", "privacy=none"], "secagg.enabled=true needs user-level DP"),
    (["secagg.enabled=true", "secagg.quantization_range=8388608"], "population.num_users * secagg.quantization_range must be < 2**32"),
    (["secagg.enabled=true", "simulation.nodes=4"], "cannot run with secagg.enabled=true"),
])
def test_impossible_secagg_configs_fail_naming_the_key(compose_config, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("*", r"\*")):
        settings_from_config(compose_config(*overrides))


def test_deploy_config_composes_with_secagg_off_and_real_deployment_settings():
    from server.server_app import compose_settings

    settings = compose_settings("deploy", ["secagg.enabled=true"])
    assert settings.secagg.enabled and settings.secagg.num_shares % 2 == 1
    assert settings.deployment.server_eval is False and settings.deployment.min_nodes == 3
    assert compose_settings("deploy", []).secagg.enabled is False


# ------------------------------------------------------------------------------------- end to end, simulation
CLIP = 0.5
TINY = ["population=small", "population.num_users=4", "population.eval_users=2", "population.days=10",
        "simulation.sample_rate=1.0", "simulation.rounds=1", "simulation.final_eval_clients=0",
        "simulation.central_baseline_epochs=0", "privacy.target_epsilon=20", "train.max_examples=16",
        "deployment.warm_up_nodes=2", "simulation.nodes=0",
        # No dropout: a worker's first client builds its model after seeding torch and so draws different dropout
        # masks than later clients (client.local_update seeds before load_model). Without dropout, training is the
        # same whichever worker runs it, so the two runs below train identical updates.
        "model.dropout=0.0", "model.head_dropout=0.0",
        "privacy.noise=seeded",  # both runs draw the same noise, so their released models can be compared
        # C and a plain server step (new = current + noisy mean) are what the comparisons below compute with
        f"privacy.clipping_norm={CLIP}", "strategy.server_lr=1", "strategy.momentum=0"]
QUANTISATION = 4096  # coarse on purpose: the quantisation error must dominate float rounding to be seen


@pytest.fixture(scope="module")
def plain_and_secure_runs(tmp_path_factory):
    """One Flower simulation whose ServerApp runs round 1 twice from the same state: plain, then with SecAgg+.

    The ServerApp runs in this process, so the sums each path aggregated are recorded on the way (the plain path's
    client updates, the secure path's revealed sum); only the model and metrics would be visible otherwise.
    """
    from flwr.app import Context as FlwrContext
    from flwr.serverapp import ServerApp
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType
    from hydra import compose, initialize_config_dir

    import server.round
    from simulations.federation.simulation_client_app import app as client_app
    from simulations.federation.simulation_server_app import simulated_run
    from tests.helpers import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        plain = settings_from_config(compose(config_name="config", overrides=TINY))
        secure = settings_from_config(compose(config_name="config", overrides=TINY + [
            "secagg.enabled=true", f"secagg.quantization_range={QUANTISATION}"]))
    out = tmp_path_factory.mktemp("secagg")
    results: dict = {}
    seen: dict = {}
    original_sum, original_release = server.round.RoundSum, server.round.release_secure_sum

    class RecordingSum(original_sum):
        def add(self, update, statistics):
            seen.setdefault("plain", (self.current, []))[1].append(update)
            return super().add(update, statistics)

    def recording_release(strategy, server_round, current, secure_sum, **kwargs):
        seen["secure"] = (current, secure_sum, kwargs["sensitivity"], kwargs["mechanism"])
        return original_release(strategy, server_round, current, secure_sum, **kwargs)

    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context):
        for name, settings in (("plain", plain), ("secure", secure)):
            results[name] = simulated_run(settings, out / name).run(grid)

    server.round.RoundSum, server.round.release_secure_sum = RecordingSum, recording_release
    try:
        _run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=4, backend_name="ray",
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"include_dashboard": False}},
            server_app_context=FlwrContext(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
            exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        )
    finally:
        server.round.RoundSum, server.round.release_secure_sum = original_sum, original_release
    return results, out, seen


@pytest.mark.slow
def test_secure_aggregate_matches_the_plain_aggregate_within_the_quantisation_error(plain_and_secure_runs):
    results, out, seen = plain_and_secure_runs
    assert results["plain"]["rounds"][0]["replies"] == 4 and results["secure"]["rounds"][0]["replies"] == 4
    current, updates = seen["plain"]
    exact = {k: sum(clip_update(u, CLIP)[0][k].astype(np.float64) for u in updates) for k in current}
    _, secure_sum, sensitivity, dp = seen["secure"]
    step = quantisation_error_bound(quantisation_clipping_range(CLIP), QUANTISATION)
    diff = max(float(np.max(np.abs(secure_sum.total[k] - exact[k]))) for k in current)
    assert diff <= 4 * step + 1e-6  # four clients, each rounded by less than one step per coordinate
    assert diff > step / 10  # the secure path really went through SecAgg's integer arithmetic
    assert max(float(np.max(np.abs(exact[k]))) for k in current) > 20 * step  # and the sums are not both ~0
    # The released models: same noise draws, scaled to each path's sensitivity (C, or C plus rounding).
    plain_model = load_checkpoint(out / "plain" / "checkpoint.pt").arrays
    secure_model = load_checkpoint(out / "secure" / "checkpoint.pt").arrays
    qn, z = dp.expected_clients, dp.noise_multiplier
    for k in current:
        noise = (qn * (plain_model[k].astype(np.float64) - current[k]) - exact[k]) / (z * contribution_sensitivity(CLIP))
        predicted = current[k] + (secure_sum.total[k] + z * sensitivity * noise) / qn
        np.testing.assert_allclose(secure_model[k], predicted, atol=2e-5)
    assert load_checkpoint(out / "secure" / "checkpoint.pt").ledger == load_checkpoint(out / "plain" / "checkpoint.pt").ledger


@pytest.mark.slow
def test_secure_run_reports_the_protocol_and_only_noisy_statistics(plain_and_secure_runs):
    results, out, _ = plain_and_secure_runs
    saved = json.loads((out / "secure" / "metrics.json").read_text())
    row = saved["rounds"][0]
    assert row["statistics_noisy"] and row["secagg_halted"] is None and "clipped_fraction" not in row
    report = saved["privacy"]["secure_aggregation"]
    assert report["quantization_range"] == QUANTISATION and report["num_shares"] == 3 and report["sensitivity"] > CLIP
    assert saved["privacy"]["user_level"]["rounds"] == 1
    assert "secure_aggregation" not in results["plain"]["privacy"]
