import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from client.local_update import TRAIN_METRICS
from client.records import to_array_record
from server.aggregation import UserLevelDP, aggregate, make_strategy
from server.replies import ClientUpdate, sort_replies
from server.settings import StrategySettings

CURRENT = {"w": np.zeros((3, 2), dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


def _update(node, value, examples=10):
    arrays = {k: np.full_like(v, value) for k, v in CURRENT.items()}
    metrics = {k: 0 for k in TRAIN_METRICS} | {"num-examples": examples}
    return ClientUpdate(node, arrays, metrics)


def test_user_level_mean_clips_each_update_and_divides_by_the_expected_count(flower_task_identity):
    updates = [_update(1, 1.0), _update(2, 0.01)]  # norms sqrt(8) (clipped to 1) and 0.0283 (kept)
    dp = UserLevelDP(clipping_norm=1.0, noise_multiplier=0.0, expected_clients=4.0)
    new, stats = aggregate(make_strategy(StrategySettings()), 1, CURRENT, updates, dp=dp, rng=np.random.default_rng(0))
    expected = (1.0 / np.sqrt(8) + 0.01) / 4.0
    assert np.allclose(new["w"], expected) and np.allclose(new["b"], expected)
    assert stats.clipped_fraction == 0.5


def test_user_level_noise_on_the_sum_has_std_z_c_over_expected_count(flower_task_identity):
    big = {"w": np.zeros((400, 500), dtype=np.float32)}
    dp = UserLevelDP(clipping_norm=2.0, noise_multiplier=1.5, expected_clients=10.0)
    new, _ = aggregate(make_strategy(StrategySettings()), 1, big, [], dp=dp, rng=np.random.default_rng(0))
    assert new["w"].std() == pytest.approx(1.5 * 2.0 / 10.0, rel=0.01)  # released even with no client


def test_plain_fedavg_weights_by_examples(flower_task_identity):
    new, _ = aggregate(make_strategy(StrategySettings()), 1, CURRENT, [_update(1, 1.0, 30), _update(2, 0.0, 10)], dp=None, rng=np.random.default_rng(0))
    assert np.allclose(new["w"], 0.75)


def test_fedmedian_ignores_an_outlier(flower_task_identity):
    updates = [_update(1, 0.1), _update(2, 0.2), _update(3, 1000.0)]
    new, _ = aggregate(make_strategy(StrategySettings(name="fedmedian")), 1, CURRENT, updates, dp=None, rng=np.random.default_rng(0))
    assert np.allclose(new["w"], 0.2)


def test_fedadam_moves_towards_the_mean_update_and_keeps_moments(flower_task_identity):
    strategy = make_strategy(StrategySettings(name="fedadam", server_lr=0.1))
    new, _ = aggregate(strategy, 1, CURRENT, [_update(1, 1.0)], dp=None, rng=np.random.default_rng(0))
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
    replies = [Message(_content(arrays, metrics), dst_node_id=0, message_type="train")]
    out = sort_replies(replies, CURRENT)
    assert not out.updates and len(out.rejected) == 1 and reason in out.rejected[0][1]


def test_declines_are_counted_with_their_reason(flower_task_identity):
    metrics = {k: 0 for k in TRAIN_METRICS} | {"declined": 1}
    out = sort_replies([Message(_content(None, metrics, {"declined": "budget"}), dst_node_id=0, message_type="train")], CURRENT)
    assert out.declined == [(out.declined[0][0], "budget")] and not out.updates and not out.rejected


def test_a_good_reply_becomes_an_update(flower_task_identity):
    out = sort_replies([Message(_content(dict(CURRENT)), dst_node_id=0, message_type="train")], CURRENT)
    assert len(out.updates) == 1 and set(out.updates[0].arrays) == set(CURRENT)


def test_a_superlink_error_reply_is_attributed_to_the_node_the_message_was_sent_to(flower_task_identity):
    from flwr.app import Error
    from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode

    sent = [Message(_content(dict(CURRENT)), dst_node_id=node, message_type="train") for node in (7, 8)]
    for message, message_id in zip(sent, ("to-7", "to-8")):
        message.metadata.__dict__["_message_id"] = message_id  # what the grid's push_messages sets
    failed = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node unavailable"), reply_to=sent[0])
    failed.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID  # the SuperLink, not node 7, makes this reply
    good = Message(_content(dict(CURRENT)), reply_to=sent[1])
    out = sort_replies([failed, good], CURRENT, sent_to={m.metadata.message_id: m.metadata.dst_node_id for m in sent})
    assert out.failed == [(7, "node unavailable")] and [u.node_id for u in out.updates] == [8]
