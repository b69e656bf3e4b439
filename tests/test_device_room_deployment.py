"""The device side in the product path (issue 25, item 3): a SuperLink and three SuperNodes on 127.0.0.1, started
through ``python -m launch``, train two rounds on the devices' own log stores; each device's ClientApp keeps the
global prior it received; one device's room generates for "something relaxing" with the tiny pipeline, its request
coming from its prior and its calm acoustic log (calmer than a club listener's for the same words); the keep is
logged; and the next run trains on one more example of that device.

Plain TCP (``--insecure``) keeps this federation small; TLS, node authentication and the proxy's refusals are
``tests/test_deployment.py``'s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.data_source import device_data
from client.log_store import LogStore
from launch.processes import free_port, start
from model.device.prior_store import PriorStore
from model.log.vocab import GENRES
from protocol.instructions import DataInstructions
from studio.room import DeviceRoom
from tests.helpers import CALM_ACOUSTIC, CLUB, ROOT, listener_log

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

HOST = "127.0.0.1"
DEVICES = {"node-1": CALM_ACOUSTIC, "node-2": CLUB, "node-3": CALM_ACOUSTIC}
RUN = ["population=small", "simulation.sample_rate=1.0", "train.max_examples=16", "simulation.node_wait_s=90",
       "deployment.min_nodes=3", "simulation.final_eval_clients=0", "privacy.target_epsilon=8",
       "simulation.round_timeout_s=150"]


def deploy(*args: object) -> list[str]:
    return [sys.executable, "-m", "launch", *map(str, args)]


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("device-room-federation")
    start_ts = time.time() - 20 * 86_400
    for name, taste in DEVICES.items():
        with LogStore.open(root / name / "events.db") as store:
            store.append_many(listener_log(taste, start=start_ts, sessions=14))
    app_hash = subprocess.run(deploy("app-hash"), cwd=ROOT, check=True, capture_output=True, text=True,
                              timeout=120).stdout
    (root / "approved-apps.txt").write_text(app_hash)
    (root / "policy.json").write_text(json.dumps({"max_user_epsilon_per_run": 20.0}))
    port, local_port = free_port(), free_port()
    processes = [start("superlink", deploy("superlink", "--insecure", "--host", HOST, "--port", port,
                                           "--local-port", local_port, "--state", root / "superlink" / "state.db",
                                           "--flwr-home", root / "server-home"),
                       log_path=root / "superlink.log", env=os.environ, cwd=root)]
    try:
        processes[0].wait_listening(HOST, port, timeout_s=120)
        for name in DEVICES:
            processes.append(start(name, deploy(
                "supernode", "--insecure", "--superlink", f"{HOST}:{port}", "--log-db", root / name / "events.db",
                "--approved-apps", root / "approved-apps.txt", "--privacy-policy", root / "policy.json",
                "--port", free_port(), "--flwr-home", root / f"{name}-home"), log_path=root / f"{name}.log",
                env=os.environ, cwd=root))
        yield {"root": root, "operator": ["--insecure", "--superlink", f"{HOST}:{local_port}",
                                          "--flwr-home", root / "operator-home"]}
    finally:
        for process in reversed(processes):
            process.stop(timeout_s=15)


def _run(federation, name: str, rounds: int) -> dict:
    out = federation["root"] / "out" / name
    result = subprocess.run(deploy("run", *RUN, f"simulation.rounds={rounds}", "--output-dir", out,
                                   *federation["operator"]), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def _examples(log_db: Path) -> int:
    data = device_data(DataInstructions(window=32, eval_fraction=0.2), {"log-db": str(log_db)})
    return len(data.train) + len(data.held_out)


def test_each_device_keeps_the_prior_and_its_room_personalises_a_real_generation(federation):
    root = federation["root"]
    metrics = _run(federation, "first", rounds=2)
    assert [r["replies"] for r in metrics["rounds"]] == [3, 3]
    kept = {name: PriorStore(root / name / "events.device" / "prior").current() for name in DEVICES}
    assert all(k is not None and k.info.version == 1 and k.info.message == "train" for k in kept.values()), kept
    assert len({k.info.fingerprint for k in kept.values()}) == 1  # the same global model on every device

    calm = DeviceRoom(root / "node-1" / "events.db")
    club = DeviceRoom(root / "node-2" / "events.db")
    calm_request = calm.request("something relaxing", seed=1)
    club_request = club.request("something relaxing", seed=1)
    assert calm_request.preference.prior_version == f"{kept['node-1'].info.run_key} v1"
    # Both devices hold the same prior: a 3-device DP model after 2 rounds, whose own genre guess is mostly its noise
    # (fresh runs asked for folk + hiphop, or jazz for the club user). What each device's log adds (its window through
    # the LSTM, its personal offset) must move the preference its user's way.
    calm_probs, club_probs = calm_request.preference.probs, club_request.preference.probs
    acoustic = [GENRES.index("folk"), GENRES.index("classical")]
    assert calm_probs[acoustic].sum() > club_probs[acoustic].sum(), (calm_probs, club_probs)
    assert club_probs[GENRES.index("electronic")] > calm_probs[GENRES.index("electronic")], (calm_probs, club_probs)
    assert calm_request.request.bpm == 72 and club_request.request.bpm == 128
    assert "acoustic_guitar" in calm_request.request.instruments and "synth" in club_request.request.instruments
    assert "calm" in calm_request.request.moods and "calm" not in club_request.request.moods

    before = _examples(calm.log_db)
    piece = calm.generate("something relaxing", seed=1)
    assert piece.audio_path.is_file() and piece.source == "ace-step-1.5-tiny"
    assert piece.proposal.request.bpm == 72 and calm.events[-1].prompt == "something relaxing"
    calm.react(piece.id, "keep")
    calm.close()
    club.close()
    assert _examples(root / "node-1" / "events.db") == before + 1  # what the ClientApp cuts from the log next round

    again = _run(federation, "next", rounds=1)
    assert again["rounds"][0]["replies"] == 3  # node-1 trained on its log with the kept piece
    newer = PriorStore(root / "node-1" / "events.device" / "prior").current()
    assert newer.info.run_key != kept["node-1"].info.run_key and newer.info.version == 0
