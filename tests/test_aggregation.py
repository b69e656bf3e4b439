import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from privacy.user_level import NoUserLevelPrivacy
from protocol.metrics import TRAIN_METRICS
from protocol.records import to_array_record
from server.aggregation import aggregate, make_strategy
from server.replies import ClientUpdate, judge_reply
from server.settings import StrategySettings
from tests.helpers import gaussian_mechanism

CURRENT = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


def _update(node, value, examples=10):
    arrays = {k: np.full_like(v, value) for k, v in CURRENT.items()}
    metrics = {k: 0 for k in TRAIN_METRICS} | {"num-examples": examples}
    return ClientUpdate(node, arrays, metrics)


def test_user_level_mean_clips_each_update_and_divides_by_the_expected_count(flower_task_identity):
    updates = [_update(1, 1.0), _update(2, 0.01)]  # norms sqrt(8) (clipped to 1) and 0.0283 (kept)
    dp = gaussian_mechanism(clipping_norm=1.0, noise_multiplier=0.0, expected_clients=4)
    new, stats = aggregate(make_strategy(StrategySettings()), 1, CURRENT, updates, mechanism=dp)
    expected = (1.0 / np.sqrt(8) + 0.01) / 4.0
    assert np.allclose(new["w"], expected) and np.allclose(new["b"], expected)
    assert stats.clipped_fraction == 0.5


def test_user_level_noise_on_the_sum_has_std_z_c_over_expected_count(flower_task_identity):
    big = {"w": np.zeros((400, 500), dtype=np.float32)}
    dp = gaussian_mechanism(clipping_norm=2.0, noise_multiplier=1.5, expected_clients=10)
    new, _ = aggregate(make_strategy(StrategySettings()), 1, big, [], mechanism=dp)
    assert new["w"].std() == pytest.approx(1.5 * 2.0 / 10.0, rel=0.01)  # released even with no client


def test_plain_fedavg_weights_by_examples(flower_task_identity):
    new, _ = aggregate(make_strategy(StrategySettings()), 1, CURRENT, [_update(1, 1.0, 30), _update(2, 0.0, 10)], mechanism=NoUserLevelPrivacy())
    assert np.allclose(new["w"], 0.75)


def test_fedmedian_ignores_an_outlier(flower_task_identity):
    updates = [_update(1, 0.1), _update(2, 0.2), _update(3, 1000.0)]
    new, _ = aggregate(make_strategy(StrategySettings(name="fedmedian")), 1, CURRENT, updates, mechanism=NoUserLevelPrivacy())
    assert np.allclose(new["w"], 0.2)


def test_fedadam_moves_towards_the_mean_update_and_keeps_moments(flower_task_identity):
    strategy = make_strategy(StrategySettings(name="fedadam", server_lr=0.1))
    new, _ = aggregate(strategy, 1, CURRENT, [_update(1, 1.0)], mechanism=NoUserLevelPrivacy())
    assert np.all(new["w"] > 0) and strategy.m_t is not None


def _content(arrays=None, metrics=None, status=None):
    content = RecordDict({"metrics": MetricRecord(metrics if metrics is not None else {k: 0 for k in TRAIN_METRICS} | {"num-examples": 5})})
    if arrays is not None:
        content["arrays"] = to_array_record(arrays)
    if status is not None:
        content["status"] = ConfigRecord(status)
    return content


@pytest.mark.parametrize("arrays,metrics,reason", [
    ({"w": np.full((3, 2), np.nan, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}, None, "NaN or Inf"),
    ({"w": np.zeros((3, 2), dtype=np.float32)}, None, "array names differ"),
    ({"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32), "x": np.zeros(1, dtype=np.float32)}, None, "array names differ"),
    ({"w": np.zeros((2, 3), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}, None, "has shape"),
    (None, None, "expected one ArrayRecord"),
    (dict(CURRENT), {"num-examples": 5}, "are not the declared"),
])
def test_malformed_replies_are_rejected_and_counted(flower_task_identity, arrays, metrics, reason):
    verdict = judge_reply(Message(_content(arrays, metrics), dst_node_id=0, message_type="train"), CURRENT)
    assert verdict.kind == "rejected" and reason in verdict.reason and verdict.arrays is None


def test_declines_are_counted_with_their_reason(flower_task_identity):
    metrics = {k: 0 for k in TRAIN_METRICS} | {"declined": 1}
    verdict = judge_reply(Message(_content(None, metrics, {"declined": "budget"}), dst_node_id=0, message_type="train"), CURRENT)
    assert (verdict.kind, verdict.reason, verdict.arrays) == ("declined", "budget", None)


def test_a_good_reply_becomes_an_update(flower_task_identity):
    verdict = judge_reply(Message(_content(dict(CURRENT)), dst_node_id=0, message_type="train"), CURRENT)
    assert verdict.kind == "update" and set(verdict.arrays) == set(CURRENT)


def test_fedavg_honours_server_lr_and_momentum(flower_task_identity):
    """FedAvg used to ignore strategy.server_lr; now it is FedAvgM: step = server_lr * (update + momentum * last)."""
    strategy = make_strategy(StrategySettings(server_lr=2.0, momentum=0.5))
    first, _ = aggregate(strategy, 1, CURRENT, [_update(1, 0.1)], mechanism=NoUserLevelPrivacy())
    assert np.allclose(first["w"], 0.2)  # 2 x the mean update
    second, _ = aggregate(strategy, 2, first, [_update(1, 0.3)], mechanism=NoUserLevelPrivacy())
    # this round's update is 0.3 - 0.2 = 0.1; with momentum the step is 2 x (0.1 + 0.5 x 0.1)
    assert np.allclose(second["w"], 0.2 + 2.0 * (0.1 + 0.5 * 0.1))


def test_fedavg_momentum_survives_a_checkpoint_as_named_arrays(flower_task_identity):
    from server.aggregation import load_strategy_state, strategy_state

    strategy = make_strategy(StrategySettings(server_lr=1.0, momentum=0.9))
    first, _ = aggregate(strategy, 1, CURRENT, [_update(1, 0.1)], mechanism=NoUserLevelPrivacy())
    state = strategy_state(strategy)
    assert set(state) == {"momentum_vector"} and all(isinstance(v, np.ndarray) for v in state["momentum_vector"].values())
    resumed = make_strategy(StrategySettings(server_lr=1.0, momentum=0.9))
    load_strategy_state(resumed, state)
    a, _ = aggregate(strategy, 2, first, [_update(1, 0.3)], mechanism=NoUserLevelPrivacy())
    b, _ = aggregate(resumed, 2, first, [_update(1, 0.3)], mechanism=NoUserLevelPrivacy())
    assert all(np.array_equal(a[k], b[k]) for k in a)
