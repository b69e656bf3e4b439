"""What leaves the device: every reply a client sends is its bounded contribution, its bounded scores, a reason code or
nothing; every key of every reply type is enumerated here.

A Flower client mod (``Recorder``) sits around the simulation's ClientApp
(``simulations.federation.simulation_client_app.app``: the product ClientApp's functions, synthetic users and the attack
mod) and records every outgoing reply: its records (names, types, keys, values or array shapes) and its exact wire bytes
(Flower's protobuf encoding, the metadata included). Two sources of replies are checked against the same rules:

- a real run in Flower's simulation engine (``simulations.run.run_federated_simulation``, Ray, the real ServerApp)
  with privacy=both, node slots playing several users per message (each user's part of a slot's reply is held to
  the rules of a device's reply, and nothing may sit outside the parts), and one where every device is past its
  record-level budget and declines (slow);
- the ClientApp called in-process for several users and rounds under each privacy mode (none, record, user, both),
  with a small model (fast).

The rules (``protocol.reply_layout``):
- a train reply is exactly one ArrayRecord, ``contribution``: the model's ``state_dict`` names and shapes (the
  update, float32; the input of the accounted release: the server clips, sums and noises it) and
  ``round-statistics`` (3 float32 values, each in [0, β·C]: participated, unclipped, loss; read only from the noisy
  sum). A declining device sends the same record, all zero: the reply's shape says nothing about the user;
- an evaluate reply is exactly one ArrayRecord, ``evaluation``, holding ``scores`` (5 float32 values in [0, 1],
  summed and noised by the server);
- an error reply carries one of ``REASON_CODES`` and nothing else;
- the warm-up ping is empty.
So no metric, count, loss, norm, epsilon or text travels beside the release; no record key names an event field;
and neither any of the user's own prompts nor any of their events as a JSON line appears in the bytes on the wire.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_to_proto

from privacy.contribution import STATISTIC_WEIGHT, STATISTICS
from privacy.record_level import RecordLevelDP
from protocol.instructions import DataInstructions, TrainInstructions, to_config_items
from protocol.reply_layout import (
    CONTRIBUTION,
    EVAL_SCORES,
    EVALUATION,
    REASON_CODES,
    SCORES_ARRAY,
    STATISTICS_ARRAY,
)
import simulations.federation.simulation_client_app
from protocol.records import (
    USER_RECORD_NAMES,
    USERS_RECORD,
    joined_parts,
    slot_users,
    to_array_record,
    user_parts,
    users_record,
)
from model.log.events import FIELDS_BY_KIND
from model.network.networks import ModelConfig, PreferenceLSTM
from model.network.training import LocalTrainConfig
from simulations.federation.device_data import device_examples, population, simulated_data
from simulations.population.population import PopulationConfig

REAL_APP = simulations.federation.simulation_client_app.app
"""The ClientApp every simulated device runs; in a Ray worker this module is imported afresh and finds the same one."""
EVENT_FIELD_NAMES = {"time", "kind", *itertools.chain.from_iterable(FIELDS_BY_KIND.values())}


def describe(content: RecordDict) -> dict:
    """A JSON-ready account of one user's reply: each record's type and entries (values, or shape, dtype and values
    of arrays)."""
    records = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            entries = {k: {"shape": list(a.shape), "dtype": str(a.dtype),
                           "max": float(np.max(a.numpy())) if a.numpy().size else 0.0,
                           "min": float(np.min(a.numpy())) if a.numpy().size else 0.0,
                           **({"values": a.numpy().tolist()} if k in (STATISTICS_ARRAY, SCORES_ARRAY) else {})}
                       for k, a in record.items()}
        else:
            entries = {k: (v if isinstance(v, (bool, int, float, str, list)) else repr(v)) for k, v in record.items()}
        records[name] = {"type": type(record).__name__, "entries": entries}
    return {"records": records}


def _error(reply: Message) -> dict:
    return {"error": {"code": reply.error.code, "reason": str(reply.error.reason)}}


def per_user(msg: Message, reply: Message, context: Context) -> list[tuple[int | None, dict]]:
    """(user, account) for each user the reply answers for: a device's one user, or each user a slot played. A slot's
    reply records not belonging to any user's part are listed under ``"unclaimed"`` (the rules allow none)."""
    users = slot_users(msg.content)
    if users is None:
        user = context.node_config.get("partition-id")
        return [(None if user is None else int(user), _error(reply) if reply.has_error() else describe(reply.content))]
    if reply.has_error():
        return [(user, _error(reply)) for user in users]
    claimed = {f"{name}.{i}" for i in range(len(users)) for name in USER_RECORD_NAMES}
    unclaimed = sorted(set(reply.content.keys()) - claimed)
    return [(user, describe(part) | {"unclaimed": unclaimed}) for user, part in zip(users, user_parts(reply.content, len(users)))]


class Recorder:
    """A Flower client mod that writes every reply leaving the ClientApp to ``directory``: one JSON line per user the
    reply answers for (``<pid>.jsonl``) and the reply's protobuf wire bytes (``<pid>-<n>.pb``), against which each of
    those users' private text is checked. Picklable, so Ray workers get it too."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __call__(self, msg: Message, context: Context, call_next) -> Message:
        reply = call_next(msg, context)
        self.directory.mkdir(parents=True, exist_ok=True)
        log = self.directory / f"{os.getpid()}.jsonl"
        number = len(list(self.directory.glob(f"{os.getpid()}-*.pb")))
        wire = self.directory / f"{os.getpid()}-{number}.pb"
        wire.write_bytes(message_to_proto(reply).SerializeToString())
        config = dict(msg.content["config"]) if "config" in msg.content.config_records else {}
        with log.open("a") as out:
            for user, account in per_user(msg, reply, context):
                line = {"message_type": msg.metadata.message_type, "user": user, "round": config.get("round"),
                        "wire": wire.name, **account}
                out.write(json.dumps(line) + "\n")
        return reply


def _to_real_app(msg: Message, context: Context) -> Message:
    return REAL_APP(msg, context)


def recording_app(directory: Path) -> ClientApp:
    """A ClientApp that hands every message to the real one, with ``Recorder`` around it."""
    app = ClientApp(mods=[Recorder(directory)])
    app.train()(_to_real_app)
    app.evaluate()(_to_real_app)
    app.query("ping")(_to_real_app)
    return app


def load_records(directory: Path) -> list[dict]:
    """Every recorded reply, with its wire bytes under ``"bytes"``."""
    out = []
    for log in sorted(directory.glob("*.jsonl")):
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            entry["bytes"] = (directory / entry["wire"]).read_bytes()
            out.append(entry)
    return out


def private_texts(events: list) -> set[str]:
    """Text of the user's log that must never leave: every prompt, and every event rendered as its JSON line."""
    texts = {e.prompt for e in events if e.prompt and len(e.prompt) >= 6}
    return texts | {json.dumps(e.to_json_dict(), ensure_ascii=False) for e in events}


def assert_only_declared(entry: dict, *, state_shapes: dict[str, list[int]], private: set[str],
                         clipping_norm: float | None = None) -> None:
    """The rules of the module docstring, for one recorded reply (``clipping_norm``: the run's C, which bounds the
    statistics; None: no user-level DP)."""
    assert not entry.get("unclaimed"), f"a slot's reply holds records of no user: {entry['unclaimed']}"
    kind = entry["message_type"]
    leaked = [text for text in private if text.encode("utf-8") in entry["bytes"]]
    assert not leaked, f"private text on the wire: {leaked[:3]}"
    if "error" in entry:
        assert entry["error"]["reason"] in REASON_CODES, f"an error reply carries {entry['error']['reason']!r}"
        return
    records = entry["records"]
    if kind.startswith("query"):
        assert records == {}
        return
    assert all(record["type"] == "ArrayRecord" for record in records.values()), "only arrays leave a device"
    for record in records.values():
        for key in record["entries"]:
            assert key not in EVENT_FIELD_NAMES, f"record key {key!r} names an event field"
    if kind == "evaluate":
        assert set(records) == {EVALUATION}, f"records {sorted(records)}"
        scores = records[EVALUATION]["entries"]
        assert set(scores) == {SCORES_ARRAY} and scores[SCORES_ARRAY]["shape"] == [len(EVAL_SCORES)]
        assert scores[SCORES_ARRAY]["dtype"] == "float32"
        assert all(0.0 <= v <= 1.0 for v in scores[SCORES_ARRAY]["values"])
        return
    assert kind == "train" and set(records) == {CONTRIBUTION}, f"records {sorted(records)}"
    arrays = records[CONTRIBUTION]["entries"]
    assert {k: a["shape"] for k, a in arrays.items()} == state_shapes | {STATISTICS_ARRAY: [len(STATISTICS)]}
    assert all(a["dtype"] == "float32" for a in arrays.values())
    weight = 1.0 if clipping_norm is None else STATISTIC_WEIGHT * clipping_norm
    assert all(0.0 <= v <= weight * (1 + 1e-6) for v in arrays[STATISTICS_ARRAY]["values"])
    if clipping_norm is not None:
        biggest = max(max(abs(a["max"]), abs(a["min"])) for k, a in arrays.items() if k != STATISTICS_ARRAY)
        assert biggest <= clipping_norm * (1 + 1e-5), "an update coordinate beyond the clipping norm"


def _state_shapes(config: ModelConfig) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in PreferenceLSTM(config).state_dict().items()}


# ------------------------------------------------------------------------------------- a real Flower simulation

TINY = ["population=small", "population.num_users=12", "population.eval_users=4", "population.days=10",
        "simulation.sample_rate=0.5", "simulation.rounds=3", "simulation.final_eval_clients=4",
        "simulation.central_baseline_epochs=0", "train.epochs=1", "privacy=both", "privacy.target_epsilon=20",
        "privacy.record.target_epsilon=4.75", "simulation.nodes=2", "simulation.users_per_message=3"]
"""User-level and record-level DP. With this population one local training costs a device at most 4.22 of record-level
epsilon and two cost at least 5.28, so every device trains the first time it is sampled and declines after: the run
has train replies, declines, evaluate replies and warm-up pings."""


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory):
    """The TINY run in Flower's simulation engine with the recording ClientApp: (metrics, records, settings)."""
    from hydra import compose, initialize_config_dir

    from server.settings import settings_from_config
    from simulations.run import run_federated_simulation
    from tests.helpers import ROOT

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        settings = settings_from_config(compose(config_name="config", overrides=TINY))
    base = tmp_path_factory.mktemp("recorded")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(simulations.federation.simulation_client_app, "app", recording_app(base / "replies"))
        metrics = run_federated_simulation(TINY, settings, base / "run")
    return metrics, load_records(base / "replies"), settings


def _users_private_texts(settings) -> dict[int, set[str]]:
    p = settings.population
    people = population(p.seed, p.num_users + p.eval_users, p.days)
    return {uid: private_texts(people.user(uid).events()) for uid in range(p.num_users)}


def _participated(entry: dict) -> bool:
    return entry["records"][CONTRIBUTION]["entries"][STATISTICS_ARRAY]["values"][0] > 0


@pytest.mark.slow
def test_every_reply_of_a_real_run_is_a_bounded_contribution_bounded_scores_or_empty(recorded_run):
    metrics, records, settings = recorded_run
    texts = _users_private_texts(settings)
    shapes = _state_shapes(settings.model)
    for entry in records:
        assert_only_declared(entry, state_shapes=shapes, private=texts[entry["user"]],
                             clipping_norm=settings.privacy.clipping_norm)
    trains = [e for e in records if e["message_type"] == "train"]
    answered = sum(r["replies"] + r["rejected"] for r in metrics["rounds"])
    assert len(trains) == answered and all(r["failed"] == 0 and r["rejected"] == 0 for r in metrics["rounds"])
    declined = [e for e in trains if not _participated(e)]
    assert 0 < len(declined) < len(trains)  # both kinds of train reply were seen on the wire, in one shape
    assert {e["message_type"] for e in records} == {"query.ping", "train", "evaluate"}


# ----------------------------------------------------------------------------- the ClientApp called in-process

SMALL = ModelConfig(hidden_size=16, num_layers=1, bidirectional=False)
POPULATION = PopulationConfig(seed=0, num_users=20, days=7)
DATA = simulated_data(POPULATION, window=16)
RECORD = RecordLevelDP(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=50.0, delta=1e-3)
MODES = {"none": (None, None), "record": (None, RECORD), "user": (0.5, None), "both": (0.5, RECORD)}
USERS = (2, 5, 11)


def _message(kind: str, instructions: TrainInstructions) -> Message:
    arrays = {k: v.numpy().copy() for k, v in PreferenceLSTM(instructions.model).state_dict().items()}
    content = RecordDict({"arrays": to_array_record(arrays), "config": ConfigRecord(to_config_items(instructions))})
    return Message(content, dst_node_id=0, message_type=kind)


def _run_in_process(tmp_path: Path, instructions: list[TrainInstructions], kinds: tuple[str, ...]) -> list[dict]:
    app = recording_app(tmp_path / "replies")
    for user, ins, kind in itertools.product(USERS, instructions, kinds):
        context = Context(run_id=1, node_id=user, node_config={"partition-id": user}, state=RecordDict(), run_config={})
        app(_message(kind, ins), context)
    return load_records(tmp_path / "replies")


@pytest.mark.parametrize("mode", MODES)
def test_in_process_replies_of_every_privacy_mode_hold_only_declared_content(flower_task_identity, tmp_path, mode):
    clipping, record = MODES[mode]
    rounds = [TrainInstructions(round=r, seed=0, model=SMALL, train=LocalTrainConfig(batch_size=8), data=DATA,
                                clipping_norm=clipping, record=record, device_dir=str(tmp_path / "devices"))
              for r in (1, 2)]
    records = _run_in_process(tmp_path, rounds, ("train", "evaluate"))
    people = population(POPULATION.seed, POPULATION.num_users, POPULATION.days)
    assert len(records) == len(USERS) * 2 * 2
    for entry in records:
        private = private_texts(people.user(entry["user"]).events())
        assert_only_declared(entry, state_shapes=_state_shapes(SMALL), private=private, clipping_norm=clipping)
    trained = [e for e in records if e["message_type"] == "train"]
    assert all(_participated(e) for e in trained)
    losses = [e["records"][CONTRIBUTION]["entries"][STATISTICS_ARRAY]["values"][2] for e in trained]
    assert all((loss > 0) == (clipping is not None or record is None) for loss in losses)  # never uncovered


def test_a_declining_device_sends_the_all_zero_contribution_in_the_same_shape(flower_task_identity, tmp_path):
    broke = RecordLevelDP(noise_multiplier=0.5, max_grad_norm=1.0, target_epsilon=0.01, delta=1e-3)
    ins = TrainInstructions(round=1, seed=0, model=SMALL, train=LocalTrainConfig(batch_size=8), data=DATA,
                            clipping_norm=0.5, record=broke, device_dir=str(tmp_path / "devices"))
    records = _run_in_process(tmp_path, [ins], ("train",))
    people = population(POPULATION.seed, POPULATION.num_users, POPULATION.days)
    for entry in records:
        private = private_texts(people.user(entry["user"]).events())
        assert_only_declared(entry, state_shapes=_state_shapes(SMALL), private=private, clipping_norm=0.5)
        assert all(a["max"] == a["min"] == 0.0 for a in entry["records"][CONTRIBUTION]["entries"].values())


def test_an_error_reply_is_a_reason_code_and_nothing_else(flower_task_identity, tmp_path):
    """Instructions that do not fit the model (the server's mistake or attack) and a device whose log cannot be read:
    both answer with a code; the exception's text, which names a path or a value, stays on the device."""
    from client.client_app import app as product_app

    ins = TrainInstructions(round=1, seed=0, model=ModelConfig(hidden_size=5), data=DATA)
    bad = _message("train", TrainInstructions(round=1, seed=0, model=SMALL, data=DATA))
    bad.content["config"] = ConfigRecord(to_config_items(ins))
    missing = Context(run_id=1, node_id=1, node_config={"log-db": str(tmp_path / "secret-name" / "events.db")},
                      state=RecordDict(), run_config={})
    for reply in (REAL_APP(bad, Context(run_id=1, node_id=2, node_config={"partition-id": 2}, state=RecordDict(),
                                        run_config={})),
                  product_app(_message("train", TrainInstructions(round=1, seed=0, model=SMALL, data=DATA)), missing)):
        entry = {"message_type": "train", **_error(reply), "bytes": message_to_proto(reply).SerializeToString()}
        assert_only_declared(entry, state_shapes=_state_shapes(SMALL), private={"secret-name", "hidden_size"})


def test_the_leak_check_would_catch_a_prompt_a_metric_a_per_example_array_or_free_error_text(flower_task_identity):
    """The rules are not vacuous: a reply carrying one prompt, a metric beside the release, per-example values, an
    oversized statistic or an exception's text fails them."""
    events = population(0, 20, 7).user(2).events()
    prompt = next(e.prompt for e in events if e.prompt and len(e.prompt) >= 6)
    shapes = _state_shapes(SMALL)
    update = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
    statistics = np.array([0.05, 0.05, 0.01], dtype=np.float32)
    request = Message(RecordDict(), dst_node_id=0, message_type="train")
    honest = RecordDict({CONTRIBUTION: to_array_record({**update, STATISTICS_ARRAY: statistics})})
    leaky = [
        RecordDict({**dict(honest.items()), "debug": ConfigRecord({"last-prompt": prompt})}),
        RecordDict({**dict(honest.items()), "metrics": MetricRecord({"train-loss": 0.4})}),
        RecordDict({CONTRIBUTION: to_array_record({**update, STATISTICS_ARRAY: statistics,
                                                   "per-example": np.zeros(len(device_examples(DATA, 2)[0]),
                                                                           dtype=np.float32)})}),
        RecordDict({CONTRIBUTION: to_array_record({**update, STATISTICS_ARRAY: np.array([0.05, 0.05, 3.7], np.float32)})}),
    ]
    for content in [honest, *leaky]:
        reply = Message(content, reply_to=request)
        entry = {"message_type": "train", **describe(reply.content), "bytes": message_to_proto(reply).SerializeToString()}
        if content is honest:
            assert_only_declared(entry, state_shapes=shapes, private=private_texts(events), clipping_norm=0.5)
            continue
        with pytest.raises(AssertionError):
            assert_only_declared(entry, state_shapes=shapes, private=private_texts(events), clipping_norm=0.5)
    text = Message(Error(code=2, reason="<class 'ValueError'>:<'bad row in /home/ann/events.db'>"), reply_to=request)
    with pytest.raises(AssertionError, match="an error reply carries"):
        assert_only_declared({"message_type": "train", **_error(text), "bytes": b""}, state_shapes=shapes, private=set())
    # A slot's reply: each user's part is well formed, but a record outside every part would slip past them.
    slot_request = Message(RecordDict({USERS_RECORD: users_record([2, 3])}), dst_node_id=0, message_type="train")
    for extra in ({}, {"debug": ConfigRecord({"n": 1})}):
        reply = Message(RecordDict({**dict(joined_parts([honest, honest]).items()), **extra}), reply_to=slot_request)
        context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        accounts = per_user(slot_request, reply, context)
        assert [user for user, _ in accounts] == [2, 3]
        for _, account in accounts:
            entry = {"message_type": "train", **account, "bytes": message_to_proto(reply).SerializeToString()}
            if extra:
                with pytest.raises(AssertionError, match="records of no user"):
                    assert_only_declared(entry, state_shapes=shapes, private=private_texts(events), clipping_norm=0.5)
            else:
                assert_only_declared(entry, state_shapes=shapes, private=private_texts(events), clipping_norm=0.5)
