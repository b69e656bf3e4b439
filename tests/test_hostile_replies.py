"""A hostile client controls every byte of its reply: the server rejects and counts, never raises, checks values in
the model's precision, bounds what it folds in, never releases a model that is not finite, and Krum picks an
honest update."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from privacy.user_level import NoUserLevelPrivacy
from protocol.records import joined_parts
from protocol.reply_layout import CONTRIBUTION, EVALUATION, SCORES_ARRAY, STATISTICS_ARRAY
from server.aggregation import aggregate, make_strategy
from server.replies import (
    Contribution,
    evaluation_scores,
    judge_reply,
    judge_slot_reply,
    slot_evaluation_scores,
)
from server.settings import StrategySettings
from tests.helpers import contribution, gaussian_mechanism

CURRENT = {"w": np.zeros((3, 2), dtype=np.float32)}


def _reply(array, statistics=None) -> Message:
    return Message(contribution({"w": array}, statistics), dst_node_id=0, message_type="train")


HOSTILE_ARRAYS = {
    "strings": (lambda: Array(np.array([["a", "b"]] * 3)), "dtype <U1, expected floating point"),
    "integers": (lambda: Array(np.zeros((3, 2), dtype=np.int64)), "expected floating point"),
    "bytes that are not an array": (lambda: Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray", data=b"junk"),
                                    "does not decode"),
    "declared shape that lies": (lambda: Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray",
                                               data=Array(np.zeros(7, dtype=np.float32)).data), "decodes to shape (7,)"),
    "unknown serialisation": (lambda: Array(dtype="float32", shape=(3, 2), stype="torch", data=b"x"), "does not decode"),
    "infinity": (lambda: Array(np.full((3, 2), np.inf, dtype=np.float32)), "NaN or Inf"),
    "float64 beyond float32": (lambda: Array(np.full((3, 2), 1e300, dtype=np.float64)), "NaN or Inf in the model's"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ARRAYS))
def test_an_array_that_cannot_be_aggregated_is_rejected_and_counted_never_raised(flower_task_identity, case):
    make, reason = HOSTILE_ARRAYS[case]
    verdict = judge_reply(_reply(make()), CURRENT)
    assert verdict.kind == "rejected" and reason in verdict.reason
    assert judge_reply(_reply(Array(np.ones((3, 2), dtype=np.float32))), CURRENT).kind == "contribution"


def test_a_float64_1e300_reply_cannot_turn_the_released_model_into_nan(flower_task_identity):
    """The attack that broke main: 1e300 is finite in float64, so a check before the cast let it through; as float32
    it is Inf, and clipping computed Inf * 0 = NaN for every coordinate of the release. Now it is checked after the
    cast and rejected; and should an Inf reach the mechanism, its running sum refuses it and the honest contributions
    are released."""
    huge = np.full((3, 2), 1e300, dtype=np.float64)
    assert np.all(np.isfinite(huge))  # the old check's view
    assert judge_reply(_reply(Array(huge)), CURRENT).kind == "rejected"
    dp = gaussian_mechanism(clipping_norm=1.0, noise_multiplier=0.0, expected_clients=2)
    with np.errstate(over="ignore", invalid="ignore"):
        poisoned = Contribution(1, {"w": huge.astype(np.float32)}, np.zeros(3, dtype=np.float32))
    honest = Contribution(2, {"w": np.full((3, 2), 0.1, dtype=np.float32)}, np.zeros(3, dtype=np.float32))
    new, _ = aggregate(make_strategy(StrategySettings(server_lr=1.0, momentum=0.0)), 1, CURRENT, [poisoned, honest],
                       mechanism=dp)
    assert np.allclose(new["w"], 0.05)  # the honest update over qN = 2; the Inf never entered the sum


def test_a_plain_aggregate_that_overflows_keeps_the_model_as_it_was(flower_task_identity):
    """Without DP nothing clips: a finite float32 update added to finite weights can pass the largest float32. The
    round keeps the model rather than release Inf."""
    big = {"w": np.full((3, 2), 3e38, dtype=np.float32)}
    updates = [Contribution(i, big, np.array([1.0, 1.0, 0.0], dtype=np.float32)) for i in range(2)]
    with np.errstate(over="ignore", invalid="ignore"):
        new, _ = aggregate(make_strategy(StrategySettings(server_lr=1.0, momentum=0.0)), 1, big, updates,
                           mechanism=NoUserLevelPrivacy())
    assert np.array_equal(new["w"], big["w"])


@pytest.mark.parametrize("content,reason", [
    (RecordDict({CONTRIBUTION: ArrayRecord({"w": Array(np.zeros((3, 2), dtype=np.float32))})}), "array names differ"),
    (RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros((3, 2), dtype=np.float32))})}), "expected exactly one"),
    (RecordDict({CONTRIBUTION: MetricRecord({"w": 1.0})}), "expected an ArrayRecord"),
    (RecordDict({**dict(contribution({"w": np.zeros((3, 2), dtype=np.float32)}).items()),
                 "metrics": MetricRecord({"train-loss": 0.1})}), "expected exactly one"),
    (RecordDict({**dict(contribution({"w": np.zeros((3, 2), dtype=np.float32)}).items()),
                 "status": ConfigRecord({"path": "/home/user/events.db"})}), "expected exactly one"),
    (contribution({"w": np.zeros((3, 2), dtype=np.float32)}, np.zeros(4, dtype=np.float32)), "has shape (4,)"),
    (contribution({"w": np.zeros((2, 3), dtype=np.float32)}), "has shape (2, 3)"),
])
def test_a_reply_that_is_not_exactly_the_declared_contribution_is_rejected(flower_task_identity, content, reason):
    verdict = judge_reply(Message(content, dst_node_id=0, message_type="train"), CURRENT)
    assert verdict.kind == "rejected" and reason in verdict.reason and verdict.update is None


def test_statistics_outside_their_range_are_clamped_so_one_device_moves_them_by_at_most_one(flower_task_identity):
    """A device claiming 1e6 participants moves the released count by at most the weight of one (the server bounds
    every coordinate whatever was sent); the same for the plain mechanism."""
    update = {"w": np.zeros((3, 2), dtype=np.float32)}
    liar = Contribution(1, update, np.array([1e6, -5.0, 1e6], dtype=np.float32))
    dp = gaussian_mechanism(clipping_norm=1.0, noise_multiplier=0.0, expected_clients=1)
    _, released = aggregate(make_strategy(StrategySettings()), 1, CURRENT, [liar], mechanism=dp)
    assert (released.participants, released.unclipped) == pytest.approx((1.0, 0.0))
    assert released.loss_sum == pytest.approx(4.0)  # the loss bound, not 1e6
    _, plain = aggregate(make_strategy(StrategySettings()), 1, CURRENT, [liar], mechanism=NoUserLevelPrivacy())
    assert plain.participants == 1.0 and plain.unclipped == 0.0


def test_krum_picks_an_honest_update_among_boosted_ones(flower_task_identity):
    participant = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    honest = [Contribution(i, {"w": np.full((3, 2), 0.1 + 0.01 * i, dtype=np.float32)}, participant) for i in range(5)]
    boosted = [Contribution(9 + i, {"w": np.full((3, 2), 50.0, dtype=np.float32)}, participant) for i in range(2)]
    strategy = make_strategy(StrategySettings(name="krum", num_malicious_nodes=2))
    new, _ = aggregate(strategy, 1, CURRENT, honest + boosted, mechanism=NoUserLevelPrivacy())
    assert 0.1 <= float(new["w"][0, 0]) <= 0.14


def _eval_reply(scores, name=SCORES_ARRAY) -> Message:
    content = RecordDict({EVALUATION: ArrayRecord({name: Array(np.asarray(scores))})})
    return Message(content, dst_node_id=0, message_type="evaluate")


GOOD_SCORES = np.array([1.0, 0.5, 0.45, 0.75, 0.4], dtype=np.float32)


MALFORMED_EVALUATIONS = {
    "a score missing": lambda: _eval_reply(GOOD_SCORES[:4]),
    "a score added": lambda: _eval_reply(np.append(GOOD_SCORES, 3.0)),
    "NaN": lambda: _eval_reply(np.where(np.arange(5) == 1, np.nan, GOOD_SCORES)),
    "finite only in float64": lambda: _eval_reply(np.full(5, 1e300)),
    "integers": lambda: _eval_reply(GOOD_SCORES.astype(np.int32)),
    "another name": lambda: _eval_reply(GOOD_SCORES, name="user-genre"),
    "the old metrics": lambda: Message(RecordDict({"metrics": MetricRecord({"num-examples": 4, "eval-top1": 0.5})}),
                                       dst_node_id=0, message_type="evaluate"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_EVALUATIONS))
def test_a_malformed_evaluation_reply_is_refused_not_raised(flower_task_identity, case):
    assert evaluation_scores(MALFORMED_EVALUATIONS[case]()) is None
    assert np.allclose(evaluation_scores(_eval_reply(GOOD_SCORES)), GOOD_SCORES)


def test_evaluation_scores_outside_zero_one_are_clamped(flower_task_identity):
    assert evaluation_scores(_eval_reply(np.array([9.0, -2.0, 0.5, 7.0, 0.2], dtype=np.float32))).tolist() == [
        1.0, 0.0, 0.5, 1.0, pytest.approx(0.2)]


def _slot_reply(parts: list[RecordDict]) -> Message:
    return Message(joined_parts(parts), dst_node_id=0, message_type="train")


def test_each_user_of_a_slot_reply_is_judged_on_its_own(flower_task_identity):
    """One malformed user in a slot's reply costs only its own update; a missing part is rejected, not skipped."""
    good, bad = _reply(Array(np.ones((3, 2), dtype=np.float32))).content, _reply(Array(np.full((3, 2), np.nan, dtype=np.float32))).content
    verdicts = judge_slot_reply(_slot_reply([good, bad, good]), 4, CURRENT)
    assert [v.kind for v in verdicts] == ["contribution", "rejected", "contribution", "rejected"]
    assert "NaN" in verdicts[1].reason and "expected exactly one record" in verdicts[3].reason
    assert np.array_equal(verdicts[2].update["w"], np.ones((3, 2)))


def test_a_slot_reply_with_records_outside_its_users_parts_is_rejected_whole(flower_task_identity):
    good = _reply(Array(np.ones((3, 2), dtype=np.float32))).content
    content = RecordDict({**dict(joined_parts([good, good]).items()), "debug": ConfigRecord({"prompt": "a"})})
    verdicts = judge_slot_reply(Message(content, dst_node_id=0, message_type="train"), 2, CURRENT)
    assert [v.kind for v in verdicts] == ["rejected", "rejected"] and "outside" in verdicts[0].reason


def test_an_error_reply_from_a_slot_fails_every_user_it_played_with_its_code_only(flower_task_identity):
    failed = Message(Error(code=2, reason="internal"), reply_to=_reply(Array(np.ones((3, 2), dtype=np.float32))))
    assert [(v.kind, v.reason) for v in judge_slot_reply(failed, 3, CURRENT)] == [("failed", "internal")] * 3
    assert slot_evaluation_scores(failed, 2) == [None, None]
    text = Message(Error(code=2, reason="<class 'ValueError'>:<'/home/a/events.db is broken'>"),
                   reply_to=_reply(Array(np.ones((3, 2), dtype=np.float32))))
    assert judge_reply(text, CURRENT).reason == "unrecognised error (code 2)"  # free text is never echoed
    dead = Message(Error(code=5, reason="Node 7 is unavailable at /srv/x"), reply_to=_reply(Array(np.ones((3, 2)))))
    assert judge_reply(dead, CURRENT).reason == "node-unavailable"  # the SuperLink's label for a dead node, by code


def test_slot_evaluation_scores_are_checked_per_user(flower_task_identity):
    parts = [_eval_reply(GOOD_SCORES).content, _eval_reply(GOOD_SCORES[:2]).content]
    first, second = slot_evaluation_scores(_slot_reply(parts), 2)
    assert np.allclose(first, GOOD_SCORES) and second is None


def test_declines_are_all_zero_contributions_counted_only_in_the_released_statistics(flower_task_identity):
    zero = Contribution(3, {"w": np.zeros((3, 2), dtype=np.float32)}, np.zeros(3, dtype=np.float32))
    participant = Contribution(4, {"w": np.ones((3, 2), dtype=np.float32)}, np.array([1.0, 1.0, 0.5], np.float32))
    new, released = aggregate(make_strategy(StrategySettings(server_lr=1.0, momentum=0.0)), 1, CURRENT,
                              [zero, participant], mechanism=NoUserLevelPrivacy())
    assert released.participants == 1.0 and np.allclose(new["w"], 1.0)  # the decline is not averaged in
    assert STATISTICS_ARRAY not in new
