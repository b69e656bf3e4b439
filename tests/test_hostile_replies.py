"""A hostile client controls every byte of its reply: the server rejects and counts, never raises, and Krum
picks an honest update."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from privacy.user_level import NoUserLevelPrivacy
from protocol.metrics import TRAIN_METRICS
from server.aggregation import aggregate, make_strategy
from server.replies import ClientUpdate, judge_reply
from server.settings import StrategySettings

CURRENT = {"w": np.zeros((3, 2), dtype=np.float32)}


def _reply(array: Array, examples: float = 5) -> Message:
    metrics = {k: 0 for k in TRAIN_METRICS} | {"num-examples": examples}
    content = RecordDict({"metrics": MetricRecord(metrics), "arrays": ArrayRecord({"w": array})})
    return Message(content, dst_node_id=0, message_type="train")


HOSTILE_ARRAYS = {
    "strings": (lambda: Array(np.array([["a", "b"]] * 3)), "dtype <U1, expected floating point"),
    "integers": (lambda: Array(np.zeros((3, 2), dtype=np.int64)), "expected floating point"),
    "bytes that are not an array": (lambda: Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray", data=b"junk"),
                                    "does not decode"),
    "declared shape that lies": (lambda: Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray",
                                               data=Array(np.zeros(7, dtype=np.float32)).data), "decodes to shape (7,)"),
    "unknown serialisation": (lambda: Array(dtype="float32", shape=(3, 2), stype="torch", data=b"x"), "does not decode"),
    "infinity": (lambda: Array(np.full((3, 2), np.inf, dtype=np.float32)), "NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_ARRAYS))
def test_an_array_that_cannot_be_aggregated_is_rejected_and_counted_never_raised(flower_task_identity, case):
    make, reason = HOSTILE_ARRAYS[case]
    verdict = judge_reply(_reply(make()), CURRENT)
    assert verdict.kind == "rejected" and reason in verdict.reason
    assert judge_reply(_reply(Array(np.ones((3, 2), dtype=np.float32))), CURRENT).kind == "update"


@pytest.mark.parametrize("examples", [0, -31.5, 2.5, 33, 1e12])
def test_num_examples_outside_one_to_the_cap_or_not_whole_is_rejected(flower_task_identity, examples):
    verdict = judge_reply(_reply(Array(np.ones((3, 2), dtype=np.float32)), examples), CURRENT, max_examples=32)
    assert verdict.kind == "rejected" and "num-examples must be a whole number >= 1" in verdict.reason


def test_num_examples_up_to_the_cap_is_accepted_and_without_a_cap_only_the_floor_applies(flower_task_identity):
    ok = _reply(Array(np.ones((3, 2), dtype=np.float32)), 32)
    assert judge_reply(ok, CURRENT, max_examples=32).kind == "update"
    assert judge_reply(_reply(Array(np.ones((3, 2), dtype=np.float32)), 10**6), CURRENT).kind == "update"


def test_a_lone_reply_claiming_zero_examples_cannot_reach_fedavg(flower_task_identity):
    """FedAvg divides by the summed num-examples: zero would raise ZeroDivisionError in the round loop."""
    verdict = judge_reply(_reply(Array(np.ones((3, 2), dtype=np.float32)), 0), CURRENT, max_examples=32)
    updates = [ClientUpdate(1, verdict.arrays, verdict.metrics)] if verdict.kind == "update" else []
    new, _ = aggregate(make_strategy(StrategySettings()), 1, CURRENT, updates, mechanism=NoUserLevelPrivacy())
    assert verdict.kind == "rejected" and np.array_equal(new["w"], CURRENT["w"])


def test_krum_picks_an_honest_update_among_boosted_ones(flower_task_identity):
    honest = [ClientUpdate(i, {"w": np.full((3, 2), 0.1 + 0.01 * i, dtype=np.float32)}, {"num-examples": 10})
              for i in range(5)]
    boosted = [ClientUpdate(9 + i, {"w": np.full((3, 2), 50.0, dtype=np.float32)}, {"num-examples": 1000}) for i in range(2)]
    strategy = make_strategy(StrategySettings(name="krum", num_malicious_nodes=2))
    new, _ = aggregate(strategy, 1, CURRENT, honest + boosted, mechanism=NoUserLevelPrivacy())
    assert 0.1 <= float(new["w"][0, 0]) <= 0.14


def _eval_reply(metrics: dict) -> Message:
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), dst_node_id=0, message_type="evaluate")


GOOD_EVAL = {"num-examples": 4, "eval-top1": 0.5, "eval-nll": 1.9, "personal-top1": 0.75, "personal-nll": 1.7}


@pytest.mark.parametrize("metrics", [
    {"num-examples": 4, "eval-top1": 0.5},  # a declared metric missing
    GOOD_EVAL | {"user-genre": 3},  # an undeclared one added
    GOOD_EVAL | {"eval-top1": float("nan")},
    GOOD_EVAL | {"eval-top1": 7.0},  # an accuracy outside [0, 1]
    GOOD_EVAL | {"num-examples": -3},
    GOOD_EVAL | {"num-examples": 2.5},
    GOOD_EVAL | {"eval-nll": -1.0},
    GOOD_EVAL | {"personal-top1": 1.5},
    GOOD_EVAL | {"personal-nll": -0.1},
])
def test_a_malformed_evaluation_reply_is_refused_not_raised(flower_task_identity, metrics):
    from server.replies import evaluation_metrics

    assert evaluation_metrics(_eval_reply(metrics)) is None
    assert evaluation_metrics(_eval_reply(GOOD_EVAL)) == GOOD_EVAL


def _slot_reply(parts: list[RecordDict]) -> Message:
    from protocol.records import joined_parts

    return Message(joined_parts(parts), dst_node_id=0, message_type="train")


def test_each_user_of_a_slot_reply_is_judged_on_its_own(flower_task_identity):
    """One malformed user in a slot's reply costs only its own update; a missing part is rejected, not skipped."""
    from server.replies import judge_slot_reply

    good, bad = _reply(Array(np.ones((3, 2), dtype=np.float32))).content, _reply(Array(np.full((3, 2), np.nan, dtype=np.float32))).content
    verdicts = judge_slot_reply(_slot_reply([good, bad, good]), 4, CURRENT)
    assert [v.kind for v in verdicts] == ["update", "rejected", "update", "rejected"]
    assert "NaN" in verdicts[1].reason and "expected one MetricRecord, found 0" in verdicts[3].reason
    assert np.array_equal(verdicts[2].arrays["w"], np.ones((3, 2)))


def test_an_error_reply_from_a_slot_fails_every_user_it_played(flower_task_identity):
    from flwr.app import Error

    from server.replies import judge_slot_reply, slot_evaluation_metrics

    failed = Message(Error(code=0, reason="worker died"), reply_to=_reply(Array(np.ones((3, 2), dtype=np.float32))))
    assert [(v.kind, v.reason) for v in judge_slot_reply(failed, 3, CURRENT)] == [("failed", "worker died")] * 3
    assert slot_evaluation_metrics(failed, 2) == [None, None]


def test_slot_evaluation_metrics_are_checked_per_user(flower_task_identity):
    from server.replies import slot_evaluation_metrics

    parts = [_eval_reply(GOOD_EVAL).content, _eval_reply(GOOD_EVAL | {"eval-top1": 7.0}).content]
    assert slot_evaluation_metrics(_slot_reply(parts), 2) == [GOOD_EVAL, None]
