"""A real federation on 127.0.0.1, driven through ``python -m launch`` as an operator would.

One SuperLink with TLS and SuperNode authentication, three SuperNodes each training on its own SQLite log of a
synthetic user, and one node whose key was never registered. The runs, in order:

- A: two rounds of user-level DP-FedAvg, then metrics.json and checkpoint.pt in the configured output dir;
- B: resumes A (rounds 3-4); its ServerApp process is killed with SIGKILL once round 3 is checkpointed;
- C: resumes B's checkpoint; node-3's SuperNode is killed with SIGKILL while it holds round 4's instructions.

Finally every process is stopped and every port must be free again. Timings are printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from model.network.networks import PreferenceLSTM
from server.checkpoint import load_checkpoint
from launch.processes import (
    ManagedProcess, PortInUseError, command_line, descendants, ensure_port_free, free_port, is_alive, start,
)
from server.server_app import compose_settings
from tests.conftest import ROOT

# `deployment` selects it (-m deployment); `slow` keeps it out of `make test-fast` (it takes minutes on a busy machine).
pytestmark = [pytest.mark.deployment, pytest.mark.slow]

HOST = "127.0.0.1"
NODES = ("node-1", "node-2", "node-3")
# Every node takes part in every round (q = 1) so that each round's client count is known; devices evaluate
# on their own logs in tests/test_device_data.py, so no final federated evaluation here (it costs a process per node).
COMMON = ["population=small", "simulation.sample_rate=1.0", "train.max_examples=16", "simulation.node_wait_s=90",
          "deployment.min_nodes=3", "simulation.final_eval_clients=0"]
RUN_A = COMMON + ["simulation.rounds=2", "privacy.target_epsilon=20", "simulation.round_timeout_s=150"]
RUN_B = COMMON + ["simulation.rounds=4", "privacy.target_epsilon=40", "simulation.round_timeout_s=150", "resume=true"]


def deploy(*args: object) -> list[str]:
    return [sys.executable, "-m", "launch", *map(str, args)]


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _wait_for(what: str, predicate, timeout_s: float, poll_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")


@dataclass
class Federation:
    root: Path
    port: int
    superlink: ManagedProcess
    nodes: dict[str, ManagedProcess] = field(default_factory=dict)
    node_ports: dict[str, int] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)
    rogue: ManagedProcess | None = None
    trees: set[int] = field(default_factory=set)  # every pid seen under our processes
    timings: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def operator(self) -> list[str]:
        return ["--superlink", self.address, "--ca", self.root / "certs" / "ca.pem", "--flwr-home", self.root / "operator-home"]

    def note_tree(self) -> None:
        for process in [self.superlink, *self.nodes.values()]:
            self.trees.update([process.pid, *descendants(process.pid)])

    def run(self, name: str, overrides: list[str]) -> tuple[subprocess.Popen, Path, Path]:
        """Submit a run through the CLI in the background; returns (process, its log, the output dir)."""
        out, log = self.root / "out" / name, self.root / f"run-{name}.log"
        handle = open(log, "wb")
        process = subprocess.Popen(deploy("run", *overrides, "--output-dir", out, *self.operator), cwd=ROOT,
                                   stdout=handle, stderr=subprocess.STDOUT)
        handle.close()
        return process, log, out

    def run_id(self, log: Path) -> int:
        found = _wait_for(f"a run id in {log}", lambda: re.search(r"Successfully started run (\d+)", log.read_text()), 90)
        return int(found.group(1))

    def stop(self) -> list[int]:
        """Stop every process we started (and everything they spawned); returns survivors."""
        if self.stopped:
            return []
        self.note_tree()
        survivors = []
        for process in [*self.nodes.values(), self.superlink] + ([self.rogue] if self.rogue else []):
            survivors += process.stop(timeout_s=15)
        self.stopped = True
        return survivors


def _finish_run(process: subprocess.Popen, log: Path, timeout_s: float) -> str:
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"run did not finish within {timeout_s:.0f} s; log:\n" + "\n".join(_lines(log)[-40:]))
    return log.read_text(errors="replace")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    started = time.perf_counter()
    for argv in (deploy("certs", "--out", root / "certs", "--host", HOST, "--host", "localhost"),
                 deploy("node-key", "--out", root / "keys", *sum((["--name", n] for n in (*NODES, "rogue")), [])),
                 deploy("seed-logs", "--out", root / "devices", "--devices", 3, "--days", 10)):
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=120)
    port = free_port()
    superlink = start("superlink", deploy("superlink", "--certs", root / "certs", "--host", HOST, "--port", port,
                                          "--state", root / "superlink" / "state.db", "--flwr-home", root / "server-home"),
                      log_path=root / "superlink.log", env=os.environ, cwd=root)
    fed = Federation(root, port, superlink)
    try:
        superlink.wait_listening(HOST, port, timeout_s=90)
        fed.timings["superlink_up_s"] = time.perf_counter() - started
        registered = subprocess.run(deploy("register", *(root / "keys" / f"{n}.pub" for n in NODES), *fed.operator),
                                    cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        fed.node_ids = {m.group(1): int(m.group(2)) for m in re.finditer(r"(node-\d)\.pub: registered as node (\d+)", registered.stdout)}
        for name in (*NODES, "rogue"):
            fed.node_ports[name] = free_port()
            log_db = root / "devices" / (name if name != "rogue" else "node-1") / "events.db"
            process = start(name, deploy("supernode", "--superlink", fed.address, "--ca", root / "certs" / "ca.pem",
                                         "--key", root / "keys" / f"{name}.key", "--log-db", log_db,
                                         "--port", fed.node_ports[name], "--flwr-home", root / f"{name}-home",
                                         *(["--max-retries", 3] if name == "rogue" else [])),
                            log_path=root / f"{name}.log", env=os.environ, cwd=root)
            if name == "rogue":
                fed.rogue = process
            else:
                fed.nodes[name] = process
        fed.timings["federation_up_s"] = time.perf_counter() - started
        yield fed
    finally:
        fed.stop()


@pytest.fixture(scope="module")
def run_a(federation):
    started = time.perf_counter()
    process, log, out = federation.run("a", RUN_A)
    federation.note_tree()
    text = _finish_run(process, log, 600)
    federation.timings["run_a_s"] = time.perf_counter() - started
    assert process.returncode == 0, text[-3000:]
    return out, json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def run_b(federation, run_a):
    """Resume A; SIGKILL the ServerApp process as soon as round 3 is checkpointed, then stop the dead run."""
    a_dir, _ = run_a
    started = time.perf_counter()
    process, log, out = federation.run("b", RUN_B + [f"checkpoint={a_dir / 'checkpoint.pt'}"])
    run_id = federation.run_id(log)
    _wait_for("round 3's checkpoint", lambda: (out / "checkpoint.pt").is_file() and load_checkpoint(out / "checkpoint.pt").round == 3, 600, 0.5)
    serverapps = [p for p in descendants(federation.superlink.pid) if "flwr-serverapp" in command_line(p) and is_alive(p)]
    assert len(serverapps) == 1, [command_line(p) for p in serverapps]
    federation.note_tree()
    os.kill(serverapps[0], signal.SIGKILL)
    killed_at = time.perf_counter()
    stopped = subprocess.run(deploy("stop", run_id, *federation.operator), cwd=ROOT, capture_output=True, text=True, timeout=120)
    text = _finish_run(process, log, 120)
    federation.timings["run_b_s"] = time.perf_counter() - started
    return out, text, stopped, run_id, killed_at - started


@pytest.fixture(scope="module")
def run_c(federation, run_a, run_b):
    """Resume B's checkpoint; SIGKILL node-3's SuperNode (and its ClientApp) while it holds round 4's message."""
    b_dir = run_b[0]
    healthy = max(r["seconds"] for r in run_a[1]["rounds"])
    timeout = round(max(20.0, 2.5 * healthy))  # the server cannot tell a dead node from a slow one before this
    started = time.perf_counter()
    overrides = COMMON + ["simulation.rounds=4", "privacy.target_epsilon=40", f"simulation.round_timeout_s={timeout}",
                          "resume=true", f"checkpoint={b_dir / 'checkpoint.pt'}"]
    process, log, out = federation.run("c", overrides)
    run_id = federation.run_id(log)
    node3 = federation.nodes["node-3"]
    marker = f"[RUN {run_id}, ROUND"
    _wait_for("node-3 to receive round 4", lambda: any(marker in line for line in _lines(node3.log_path)), 300, 0.2)
    federation.note_tree()
    tree = [node3.pid, *descendants(node3.pid)]
    for pid in tree:
        os.kill(pid, signal.SIGKILL)  # a device losing power: no goodbye to the SuperLink
    node3.popen.wait(timeout=10)
    text = _finish_run(process, log, timeout + 300)
    federation.timings["run_c_s"] = time.perf_counter() - started
    assert process.returncode == 0, text[-3000:]
    return out, json.loads((out / "metrics.json").read_text()), timeout, tree


# ------------------------------------------------------------------------------------------------------ tests
def test_registered_nodes_train_two_rounds_with_user_level_dp_over_tls(federation, run_a):
    out, metrics = run_a
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert all(r["replies"] == 3 and r["failed"] == 0 and r["rejected"] == 0 for r in metrics["rounds"])
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.json").is_file()
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    settings = compose_settings("deploy", RUN_A)
    torch.manual_seed(settings.seed)
    initial = PreferenceLSTM(settings.model).state_dict()
    assert checkpoint.round == 2
    assert max(float(np.max(np.abs(checkpoint.arrays[k] - v.numpy()))) for k, v in initial.items()) > 1e-3
    user = metrics["privacy"]["user_level"]
    accountant = RDPAccountant()
    for _ in range(2):
        accountant.step(noise_multiplier=user["noise_multiplier"], sample_rate=1.0)
    assert user["rounds"] == 2 and user["epsilon"] == pytest.approx(accountant.get_epsilon(user["delta"]), rel=1e-9)
    assert metrics["config"]["deployment"]["server_eval"] is False  # no users' data on the server
    superlink = command_line(federation.superlink.pid)
    assert "--enable-supernode-auth" in superlink and "--ssl-certfile" in superlink and "--insecure" not in superlink
    assert f"running on https://{HOST}:{federation.port}" in (federation.root / "superlink.log").read_text()


def test_a_node_with_an_unregistered_key_is_refused(federation, run_a):
    rogue = federation.rogue
    _wait_for("the unregistered node to give up", lambda: not rogue.running(), 120)
    assert rogue.popen.returncode != 0
    assert "No SuperNode found with the given public key" in (federation.root / "superlink.log").read_text()
    env = {**os.environ, "FLWR_HOME": str(federation.root / "operator-home")}
    nodes = subprocess.run([str(Path(sys.executable).parent / "flwr"), "supernode", "ls", "fedpref", "--format", "json"],
                           env=env, capture_output=True, text=True, timeout=60)
    ids = {int(n) for n in re.findall(r'"node-id":\s*"?(\d+)', nodes.stdout)}
    assert ids == set(federation.node_ids.values()) and len(ids) == 3, nodes.stdout


def test_a_killed_serverapp_resumes_from_its_last_checkpoint_with_the_privacy_ledger_intact(run_a, run_b, run_c):
    a_dir, a = run_a
    b_dir, b_text, stopped, b_run, _ = run_b
    c_dir, c, _, _ = run_c
    assert stopped.returncode == 0 and f"run {b_run}: finished:stopped" in stopped.stdout
    assert "finished:stopped" in b_text  # `run` reports the dead run as not completed
    assert not (b_dir / "metrics.json").exists()  # B never finished; its checkpoint is all it left
    b_checkpoint = load_checkpoint(b_dir / "checkpoint.pt")
    assert b_checkpoint.round == 3
    assert [r["round"] for r in c["rounds"]] == [1, 2, 3, 4]
    assert c["rounds"][:2] == a["rounds"]
    for key in ("round", "replies", "epsilon", "train_loss", "sampled"):
        assert c["rounds"][2][key] == b_checkpoint.rounds[2][key]
    z = a["privacy"]["user_level"]["noise_multiplier"]
    assert c["privacy"]["user_level"]["noise_multiplier"] == z  # never recalibrated on resume
    accountant = RDPAccountant()
    for _ in range(4):
        accountant.step(noise_multiplier=z, sample_rate=1.0)
    assert c["privacy"]["user_level"]["rounds"] == 4
    assert c["privacy"]["user_level"]["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert load_checkpoint(c_dir / "checkpoint.pt").ledger == {"history": [[z, 1.0, 4]]}


def test_a_round_proceeds_without_a_supernode_killed_mid_round(run_c):
    _, c, timeout, _ = run_c
    last = c["rounds"][3]
    assert last["sampled"] == 3 and last["replies"] == 2 and last["failed"] == 1
    # It waited at most the timeout for the dead node (the SuperLink may report it unavailable sooner: 2 missed
    # heartbeats of 30 s).
    assert last["seconds"] <= timeout + 60


def test_stopping_the_federation_leaves_no_process_and_frees_every_port(federation, run_a, run_b, run_c):
    started = time.perf_counter()
    survivors = federation.stop()
    federation.timings["stop_s"] = time.perf_counter() - started
    assert survivors == []
    alive = [(p, command_line(p)) for p in federation.trees if is_alive(p)]
    assert alive == []
    root = str(federation.root)
    strays = []
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit() and int(pid_dir.name) != os.getpid() and root in command_line(int(pid_dir.name)):
            if is_alive(int(pid_dir.name)):
                strays.append(command_line(int(pid_dir.name)))
    assert strays == []
    for name, port in [("superlink", federation.port), *federation.node_ports.items()]:
        try:
            ensure_port_free(HOST, port, name)
        except PortInUseError as error:
            pytest.fail(str(error))
    timings = federation.timings | {"round_seconds_a": [round(r["seconds"], 1) for r in run_a[1]["rounds"]],
                                    "round_4_timeout_s": run_c[2]}
    print("\ndeployment timings:", json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in timings.items()}))
