"""Small builders shared by tests."""

from __future__ import annotations

import copy
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import tomli_w
import torch
from flwr.app import Context, RecordDict
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from model.log.event_log import MAX_LINE_BYTES
from model.log.events import FIELDS_BY_KIND, Event
from model.log.parsing import MAX_PROMPT_CHARS
from model.log.vocab import BPM_DIRECTIONS, BPM_MAX, BPM_MIN, EVENT_KINDS, GENRES, INSTRUMENTS
from model.network.networks import ModelConfig
from simulations.population.population import PopulationConfig

ROOT = Path(__file__).resolve().parent.parent
"""The project's root: the worktree these tests run (``tests/conftest.py`` puts it first on ``sys.path``)."""
T0 = 1_788_739_200  # 2026-09-07 00:00:00 UTC, a Monday
PRIOR_MODEL = ModelConfig(bidirectional=False, hidden_size=16, num_layers=1, dropout=0.0, head_dropout=0.0,
                          style_embedding_dim=8, residual=True)
"""The default model (conf/model/prior.yaml)."""
CALM_ACOUSTIC = (("folk", "classical"), 72.0, ("acoustic_guitar", "strings"))
CLUB = (("electronic",), 128.0, ("synth", "drums"))
"""(genres kept in turn, tempo, instruments) of two listeners who ask for the same vague music."""


def warm(storage: Path, warm_storage: Path) -> None:
    """Give a new device storage the step graphs and the tiny pipeline of the session's ``warm_storage`` fixture, so
    its room neither exports the default architecture's graph nor builds the pipeline again."""
    shutil.copytree(warm_storage / "prior" / "graphs", storage / "prior" / "graphs")
    shutil.copytree(warm_storage / "tiny-pipeline", storage / "tiny-pipeline")


def request(ts: float, prompt: str = "something relaxing", offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="generation_requested", prompt=prompt)


def kept(ts: float, genre: str, bpm: float = 100.0, offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="segment_kept", genre=genre, bpm=bpm, instruments=("piano",))


def redone(ts: float, genre: str, bpm: float = 100.0, offset: int = 0) -> Event:
    return Event(ts=ts, utc_offset_min=offset, kind="segment_redone", genre=genre, bpm=bpm, instruments=())


def listener_log(taste: tuple = CALM_ACOUSTIC, *, start: float = T0, sessions: int = 12,
                 prompt: str = "something to listen to") -> list[Event]:
    """A listener's log: each session a request, a redo, a tempo set, a keep of their taste (one session a day)."""
    genres, bpm, instruments = taste
    events = []
    for i in range(sessions):
        t = start + i * 86_400 + 19 * 3_600
        genre = genres[i % len(genres)]
        events += [Event(ts=t, utc_offset_min=60, kind="generation_requested", prompt=prompt),
                   Event(ts=t + 40, utc_offset_min=60, kind="segment_redone", genre=genre, bpm=bpm + 20, instruments=()),
                   Event(ts=t + 60, utc_offset_min=60, kind="bpm_set", bpm=bpm, direction="down"),
                   Event(ts=t + 90, utc_offset_min=60, kind="segment_kept", genre=genre, bpm=bpm,
                         instruments=instruments)]
    return events


def sample_events() -> list[Event]:
    return listener_log()


def gaussian_mechanism(*, clipping_norm: float, noise_multiplier: float, expected_clients: int, seed: int = 0):
    """The user-level mechanism with q = 1 over ``expected_clients`` users (qN = ``expected_clients``), seeded noise."""
    from privacy.accounting import PrivacyLedger
    from privacy.randomness import SeededNoise
    from privacy.user_level import UserLevelGaussian

    return UserLevelGaussian(clipping_norm=clipping_norm, noise_multiplier=noise_multiplier, sample_rate=1.0,
                             population=expected_clients, noise=SeededNoise([seed]), ledger=PrivacyLedger(),
                             delta=1e-5, accountant="rdp")


def contribution(update: dict, statistics=None):
    """A train reply's content: ``update``'s arrays and the statistics' array (a participant's, unclipped, loss 1
    under no clipping norm, unless given), laid out as ``protocol.reply_layout`` says, each as ``Array(value)``."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, RecordDict

    from protocol.reply_layout import CONTRIBUTION, STATISTICS_ARRAY

    if statistics is None:
        statistics = np.array([1.0, 1.0, 0.25], dtype=np.float32)
    arrays = {name: value if isinstance(value, Array) else Array(np.asarray(value)) for name, value in update.items()}
    stats = statistics if isinstance(statistics, Array) else Array(np.asarray(statistics))
    return RecordDict({CONTRIBUTION: ArrayRecord({**arrays, STATISTICS_ARRAY: stats})})


def announced(**changes) -> dict:
    """What a real server announces with every round (``protocol.instructions``): the run's key and plan and its
    user-level mechanism, within the default device policy (``client.privacy_policy``). Keyword arguments of
    ``TrainInstructions``."""
    from protocol.instructions import UserLevelInstructions

    return {"run_key": "test-run", "planned_rounds": 10,
            "user_level": UserLevelInstructions(noise_multiplier=1.0, sample_rate=0.1, delta=1e-6)} | changes


# -------------------------------------------------------------------------- a tiny run in Flower's simulation engine
TINY_SIMULATION = ["population=small", "population.num_users=16", "population.eval_users=8", "population.days=10",
                   "simulation.sample_rate=0.5", "simulation.final_eval_clients=4",
                   "simulation.central_baseline_epochs=0", "train.epochs=2"]
"""16 users, 10 days, half of them sampled a round, 2 local epochs: the smallest run that still trains."""


def tiny_simulation(compose_config, output_dir, *overrides: str) -> dict:
    """A real run in Flower's simulation engine (Ray) of ``TINY_SIMULATION`` + ``overrides``; its metrics. It starts
    Ray: a test calling it is marked slow (``tests/ray_guard.py``)."""
    from server.settings import settings_from_config
    from simulations.run import run_federated_simulation

    overrides = TINY_SIMULATION + list(overrides)
    return run_federated_simulation(overrides, settings_from_config(compose_config(*overrides)), output_dir)


# ------------------------------------------------------------- the simulation's ClientApp, one message at a time
CLIENT_POPULATION = PopulationConfig(seed=0, num_users=20, days=7)
"""The synthetic users the ClientApp tests' messages point at (``train_instructions``)."""


def train_instructions(**changes):
    """A round's ``TrainInstructions`` for the simulation's ClientApp: the default model, batches of 8, user-level
    clipping at 0.5, data of ``CLIENT_POPULATION`` in windows of 16. Keyword arguments replace any of them."""
    from model.network.training import LocalTrainConfig
    from protocol.instructions import TrainInstructions
    from simulations.federation.device_data import simulated_data

    base = dict(round=1, seed=0, model=ModelConfig(), train=LocalTrainConfig(batch_size=8),
                data=simulated_data(CLIENT_POPULATION, window=16), clipping_norm=0.5)
    return TrainInstructions(**(base | changes))


def app_message(kind: str, instructions):
    """A ``kind`` message ("train", "evaluate") carrying a freshly initialised model's arrays and ``instructions``."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from model.network.networks import PreferenceLSTM
    from protocol.instructions import to_config_items
    from protocol.records import to_array_record

    arrays = {k: v.numpy().copy() for k, v in PreferenceLSTM().state_dict().items()}
    content = RecordDict({"arrays": to_array_record(arrays), "config": ConfigRecord(to_config_items(instructions))})
    return Message(content, dst_node_id=0, message_type=kind)


def slot_message(kind: str, instructions, users: list[int]):
    """``app_message`` for a node slot playing ``users`` in turn, its model drawn after ``torch.manual_seed(0)``."""
    import torch

    from protocol.records import USERS_RECORD, users_record

    torch.manual_seed(0)
    message = app_message(kind, instructions)
    message.content[USERS_RECORD] = users_record(users)
    return message


def partition_context(user_id: int):
    """The ``Context`` of the simulated node that plays synthetic user ``user_id`` (its ``partition-id``)."""
    from flwr.app import Context, RecordDict

    return Context(run_id=1, node_id=0, node_config={"partition-id": user_id}, state=RecordDict(), run_config={})


# ------------------------------------------------------------------- valid event logs, drawn (hypothesis)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

OFFSETS_MIN = st.integers(-23 * 60 - 59, 23 * 60 + 59)
LOCAL_TIMES = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59, 999999))
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
ANY_UNICODE = st.text(st.characters() | SURROGATES, max_size=60)  # any code point, lone surrogates included


@st.composite
def time_strings(draw: st.DrawFn) -> str:
    """A valid event time: any local wall-clock time of 2000-2099 with any offset, with or without microseconds."""
    local = draw(LOCAL_TIMES)
    offset = draw(OFFSETS_MIN)
    aware = local.replace(tzinfo=timezone(timedelta(minutes=offset)))
    return "Z".join(aware.isoformat().rsplit("+00:00", 1)) if offset == 0 and draw(st.booleans()) else aware.isoformat()


FIELD_VALUES = {
    "genre": st.sampled_from(GENRES),
    "bpm": st.integers(int(BPM_MIN), int(BPM_MAX)) | st.floats(BPM_MIN, BPM_MAX),
    "direction": st.sampled_from(BPM_DIRECTIONS),
    "instrument": st.sampled_from(INSTRUMENTS),
    "enabled": st.booleans(),
    "instruments": st.lists(st.sampled_from(INSTRUMENTS), unique=True, max_size=5),
    "prompt": st.text(max_size=80) | st.text(st.sampled_from("é☕🎷\x00\n\"\\\u2028"), max_size=MAX_PROMPT_CHARS),
}


@st.composite
def event_objects(draw: st.DrawFn) -> dict:
    """A decoded JSON object of a valid event."""
    kind = draw(st.sampled_from(EVENT_KINDS))
    obj = {"time": draw(time_strings()), "kind": kind}
    for name in FIELDS_BY_KIND[kind]:
        obj[name] = draw(FIELD_VALUES[name])
    return obj


JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-(10**400), 10**400)
                | st.floats(allow_nan=True, allow_infinity=True) | ANY_UNICODE)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def valid_log(draw: st.DrawFn, max_size: int = 8) -> list[dict]:
    """Valid event objects in non-decreasing UTC time order."""
    objs = draw(st.lists(event_objects().filter(_fits), max_size=max_size))
    return sorted(objs, key=lambda o: datetime.fromisoformat(o["time"]).timestamp())


def event_line(obj: dict) -> bytes:
    """The object as one JSON line: ASCII-escaped with spaces, or compact UTF-8 when that would pass the limit."""
    text = json.dumps(obj)
    if len(text) > MAX_LINE_BYTES:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


def _fits(obj: dict) -> bool:
    return len(event_line(obj)) <= MAX_LINE_BYTES + 1


READ_IN_2100 = datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp()
"""A reading time after every generated event: the far-future rule has its own properties (test_hostile_files)."""


def expected_event(obj: dict) -> Event:
    """The event ``obj`` describes, built independently of ``parse_event``."""
    moment = datetime.fromisoformat(obj["time"])
    fields = {name: (tuple(obj[name]) if name == "instruments" else obj[name]) for name in FIELDS_BY_KIND[obj["kind"]]}
    if "bpm" in fields:
        fields["bpm"] = float(fields["bpm"])
    return Event(ts=moment.timestamp(), utc_offset_min=int(moment.utcoffset().total_seconds()) // 60,
                 kind=obj["kind"], **fields)


def assert_streams_like_torch(runtime, model, features, atol: float) -> None:
    """Step ``runtime`` (a ``DeviceStep``) and ``model.step`` over ``features`` row by row from the initial state:
    logits, h and c agree within ``atol`` at every step."""
    h, c = runtime.initial_state()
    state = model.initial_state(1)
    with torch.no_grad():
        for row in features:
            logits, h, c = runtime(row[None], h=h, c=c)
            expected, state = model.step(torch.from_numpy(row[None]), state)
            np.testing.assert_allclose(logits, expected.numpy(), atol=atol, rtol=0)
            np.testing.assert_allclose(h, state[0].numpy(), atol=atol, rtol=0)
            np.testing.assert_allclose(c, state[1].numpy(), atol=atol, rtol=0)


class InProcessGrid:
    """A Grid stand-in: each message goes to the simulation's ClientApp with that node's own context; ``silent``
    nodes never answer (offline); a ClientApp that raises answers with an error, as Flower's SuperNode does."""

    def __init__(self, node_ids, silent=(), node_configs=None) -> None:
        from types import SimpleNamespace

        self.run = SimpleNamespace(run_id=1)
        configs = node_configs or {}
        self.contexts = {n: Context(run_id=1, node_id=n, node_config=configs.get(n, {"partition-id": i}),
                                    state=RecordDict(), run_config={}) for i, n in enumerate(node_ids)}
        self.silent = set(silent)

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error, Message

        from simulations.federation.simulation_client_app import app

        replies = []
        for sent in messages:
            node = sent.metadata.dst_node_id
            if node in self.silent:
                continue
            # A real message is serialised: each node gets its own copy (the workflow shares one content object).
            message = Message(copy.deepcopy(sent.content), dst_node_id=node, message_type=sent.metadata.message_type,
                              group_id=sent.metadata.group_id)
            try:
                replies.append(app(message, self.contexts[node]))
            except Exception as error:  # noqa: BLE001 - the SuperNode turns any ClientApp failure into an error reply
                replies.append(Message(Error(code=2, reason=str(error)), reply_to=message))
        return replies


# ------------------------------------------------------- the outsider of a deployment, and a port nothing listens on
FLWR_CLI = str(Path(sys.executable).parent / "flwr")
OUTSIDER_CONNECTION = "target"
"""The name of the outsider's connection to the server in its own Flower config (``flwr ... target``)."""


@dataclass(frozen=True)
class Response:
    status: int
    server: str
    body: bytes


@dataclass
class Outsider:
    """The outsider of tests/test_deployment.py: anyone who can reach the server's public address and holds only the
    federation's public CA certificate (no node key, no secret). It drives Flower's own ``flwr`` CLI and plain HTTPS."""

    home: Path
    address: str  # the public HOST:PORT
    ca: Path

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        connection = {"address": self.address, "root-certificates": str(self.ca)}
        superlink = {"default": OUTSIDER_CONNECTION, OUTSIDER_CONNECTION: connection}
        (self.home / "config.toml").write_text(tomli_w.dumps({"superlink": superlink}))

    def flwr(self, *args: object) -> subprocess.CompletedProcess:
        """``flwr ARGS...`` against the public address; stdout and stderr together in ``.stdout``."""
        env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200"}
        argv = [FLWR_CLI, *map(str, args)]
        return subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)

    def request(self, method: str, path: str, body: bytes = b"", address: str | None = None) -> Response:
        """One HTTPS request (protobuf content type, as Flower's clients send), verified with the CA only."""
        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(f"https://{address or self.address}{path}", data=body if method != "GET" else None,
                                         method=method, headers={"content-type": "application/protobuf"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                return Response(response.status, response.headers.get("server", ""), response.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, error.headers.get("server", ""), error.read())


def refuses_connections(host: str, port: int) -> bool:
    """True if nothing accepts TCP connections on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex((host, port)) != 0
