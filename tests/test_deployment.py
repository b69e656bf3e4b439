"""A real federation on loopback, driven through ``python -m launch`` as an operator would, and attacked by an
outsider who holds only the federation's CA certificate (issue 23, items 4 and 8).

The server: ``launch superlink`` runs the SuperLink on 127.0.0.1 (TLS, SuperNode authentication, process isolation
with a SuperExec secret), its task launcher, and Caddy on 127.0.0.2 (standing for the public interface), forwarding
the Fleet API only. Three SuperNodes dial 127.0.0.2 and train on their own SQLite logs of synthetic users, running
only the app bundle whose hash they approved; a fourth node's key was never registered. The runs, in order:

- A: two rounds of user-level DP-FedAvg through the proxy, then metrics.json and checkpoint.pt; while it runs the
  outsider tries every call that succeeded against the old one-port deployment (list, log, stop, register,
  unregister, run a foreign app, take the ServerApp's task, read the API docs) and each is refused;
- B: resumes A (rounds 3-4); its ServerApp process is killed with SIGKILL once round 3 is checkpointed;
- C: resumes B's checkpoint; node-3's SuperNode is killed with SIGKILL while it holds round 4's instructions;
- F: the operator submits a foreign app bundle; no device runs it.

Throughout, no process below ours has a task token on its command line. Finally every process is stopped and every
port must be free again. A separate SuperLink with no task launcher shows ``launch run`` giving up on a run nobody
starts. Timings are printed (pytest -s).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from launch.processes import (
    ManagedProcess, PortInUseError, command_line, descendants, ensure_port_free, free_port, is_alive, start,
)
from launch.proxy import FLEET_PATHS
from model.network.networks import PreferenceLSTM
from server.checkpoint import load_checkpoint
from server.server_app import compose_settings
from tests.helpers import OUTSIDER_CONNECTION as TARGET, ROOT, Outsider, refuses_connections

# `deployment` selects it (-m deployment); `slow` keeps it out of `make test-fast` (it takes minutes on a busy machine).
pytestmark = [pytest.mark.deployment, pytest.mark.slow]

HOST = "127.0.0.1"  # the SuperLink's own address: the operator, the proxy and the ServerApp reach it here
PUBLIC = "127.0.0.2"  # stands for the server's public interface: devices and the outsider reach the proxy here
NODES = ("node-1", "node-2", "node-3")
FLWR = str(Path(sys.executable).parent / "flwr")
FOREIGN_APP = ROOT / "tests" / "foreign_app"
TOKEN = re.compile(r"[0-9a-f]{256}")  # a Flower task token: 128 random bytes in hex
# Every node takes part in every round (q = 1) so that each round's client count is known; devices evaluate
# on their own logs in tests/test_device_data.py, so no final federated evaluation here (it costs a process per node).
COMMON = ["population=small", "simulation.sample_rate=1.0", "train.max_examples=16", "simulation.node_wait_s=90",
          "deployment.min_nodes=3", "simulation.final_eval_clients=0"]
RUN_A = COMMON + ["simulation.rounds=2", "privacy.target_epsilon=8", "simulation.round_timeout_s=150"]
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


def _process_tree(roots: list[int]) -> dict[int, str]:
    """pid -> command line of ``roots`` and everything below them, from one pass over /proc."""
    parents: dict[int, int] = {}
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                stat = (pid_dir / "stat").read_text()
            except OSError:
                continue
            parents[int(pid_dir.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    tree, frontier = set(roots), list(roots)
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
        tree.update(frontier)
    return {pid: command_line(pid) for pid in tree}


@dataclass
class Federation:
    root: Path
    port: int  # public (the proxy)
    local_port: int  # the SuperLink's, on 127.0.0.1
    server: ManagedProcess
    app_hash: str
    nodes: dict[str, ManagedProcess] = field(default_factory=dict)
    node_ports: dict[str, int] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)
    registrations: list[subprocess.CompletedProcess] = field(default_factory=list)
    rogue: ManagedProcess | None = None
    trees: set[int] = field(default_factory=set)  # every pid seen under our processes
    app_processes: dict[int, str] = field(default_factory=dict)  # flwr-serverapp / flwr-clientapp seen, with argv
    token_lines: list[str] = field(default_factory=list)  # command lines that held a task token (must stay empty)
    timings: dict[str, float] = field(default_factory=dict)
    stopped: threading.Event = field(default_factory=threading.Event)

    @property
    def public(self) -> str:
        return f"{PUBLIC}:{self.port}"

    @property
    def ca(self) -> Path:
        return self.root / "certs" / "ca.pem"

    @property
    def operator(self) -> list[object]:
        return ["--superlink", f"{HOST}:{self.local_port}", "--ca", self.ca, "--flwr-home", self.root / "operator-home"]

    def flwr(self, *args: object) -> subprocess.CompletedProcess:
        """The operator's ``flwr`` on the server host (loopback), through the connection ``launch`` wrote."""
        env = {**os.environ, "FLWR_HOME": str(self.root / "operator-home"), "FLWR_TELEMETRY_ENABLED": "0"}
        return subprocess.run([FLWR, *map(str, args)], env=env, capture_output=True, text=True, timeout=120)

    def runs(self) -> list[dict]:
        return json.loads(self.flwr("ls", "fedpref", "--format", "json").stdout)["runs"]

    def child(self, name: str) -> int:
        """The pid of the server's child process whose command line holds ``name``."""
        return next(pid for pid, cmd in _process_tree([self.server.pid]).items() if name in cmd)

    def roots(self) -> list[int]:
        return [p.pid for p in (self.server, *self.nodes.values(), *([self.rogue] if self.rogue else [])) if p.running()]

    def watch_command_lines(self) -> None:
        """Until the federation stops: note every app process and any command line holding a task token."""
        while not self.stopped.wait(0.25):  # an app process lives seconds (imports)
            for pid, cmd in _process_tree(self.roots()).items():
                if "flwr-serverapp" in cmd or "flwr-clientapp" in cmd:
                    self.app_processes.setdefault(pid, cmd)
                if TOKEN.search(cmd) or " --token " in f"{cmd} ":
                    self.token_lines.append(cmd)

    def note_tree(self) -> None:
        self.trees.update(_process_tree(self.roots()))

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
        if self.stopped.is_set():
            return []
        self.note_tree()
        self.stopped.set()
        survivors = []
        for process in [*self.nodes.values(), self.server] + ([self.rogue] if self.rogue else []):
            survivors += process.stop(timeout_s=15)
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
    for argv in (deploy("certs", "--out", root / "certs", "--host", PUBLIC, "--host", "localhost"),
                 deploy("node-key", "--out", root / "keys", *sum((["--name", n] for n in (*NODES, "rogue")), [])),
                 [sys.executable, "-m", "simulations.seed_logs", "--out", str(root / "devices"), "--devices", "3",
                  "--days", "10"]):
        subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, timeout=120)
    app_hash = subprocess.run(deploy("app-hash"), cwd=ROOT, check=True, capture_output=True, text=True, timeout=120).stdout
    (root / "approved-apps.txt").write_text(f"# fedpref, as the operator submits it\n{app_hash}")
    # The devices' owners accept runs of up to epsilon 20 (resumed runs B and C plan 4 rounds at run A's z, ~11.6);
    # every other rule is the default policy's.
    (root / "privacy-policy.json").write_text(json.dumps({"max_user_epsilon_per_run": 20.0}))
    port, local_port = free_port(PUBLIC), free_port()
    server = start("superlink", deploy("superlink", "--certs", root / "certs", "--host", PUBLIC, "--port", port,
                                       "--local-port", local_port, "--state", root / "superlink" / "state.db",
                                       "--flwr-home", root / "server-home"),
                   log_path=root / "superlink.log", env=os.environ, cwd=root)
    fed = Federation(root, port, local_port, server, app_hash.strip())
    threading.Thread(target=fed.watch_command_lines, daemon=True).start()
    try:
        server.wait_listening(PUBLIC, port, timeout_s=120)  # the proxy starts last
        fed.timings["server_up_s"] = time.perf_counter() - started
        for keys in (["node-1"], NODES):  # the second time node-1 is already registered
            fed.registrations.append(subprocess.run(deploy("register", *(root / "keys" / f"{n}.pub" for n in keys),
                                                           *fed.operator), cwd=ROOT, capture_output=True, text=True,
                                                    timeout=120))
        fed.node_ids = {m.group(1): int(m.group(2)) for r in fed.registrations
                        for m in re.finditer(r"(node-\d)\.pub: registered as node (\d+)", r.stdout)}
        for name in (*NODES, "rogue"):
            fed.node_ports[name] = free_port()
            log_db = root / "devices" / (name if name != "rogue" else "node-1") / "events.db"
            process = start(name, deploy("supernode", "--superlink", fed.public, "--ca", fed.ca,
                                         "--key", root / "keys" / f"{name}.key", "--log-db", log_db,
                                         "--approved-apps", root / "approved-apps.txt",
                                         "--privacy-policy", root / "privacy-policy.json",
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


def _attack(federation: Federation, run_id: int) -> dict[str, object]:
    """Everything the outsider (CA certificate only, at the public address) tried while run ``run_id`` trained."""
    outsider = Outsider(federation.root / "outsider-home", federation.public, federation.ca)
    marker = federation.root / "foreign-ran.txt"
    return {
        "ls": outsider.flwr("ls", TARGET, "--format", "json"),
        "nodes": outsider.flwr("supernode", "list", TARGET, "--format", "json"),
        "log": outsider.flwr("log", run_id, TARGET, "--show"),
        "stop": outsider.flwr("stop", run_id, TARGET),
        "register": outsider.flwr("supernode", "register", federation.root / "keys" / "rogue.pub", TARGET, "--format", "json"),
        "unregister": outsider.flwr("supernode", "unregister", federation.node_ids["node-1"], TARGET, "--format", "json"),
        "run": outsider.flwr("run", FOREIGN_APP, TARGET, "--run-config", f"marker='{marker}'"),
        "acquire-task": outsider.request("POST", "/v1/runtime/acquire-task"),
        "docs": outsider.request("GET", "/docs"),
        "openapi": outsider.request("GET", "/openapi.json"),
        "marker": marker,
    }


@pytest.fixture(scope="module")
def run_a(federation):
    """Run A, attacked by the outsider while it trains."""
    started = time.perf_counter()
    process, log, out = federation.run("a", RUN_A)
    run_id = federation.run_id(log)
    attacks = _attack(federation, run_id)
    federation.timings["attacks_s"] = time.perf_counter() - started
    text = _finish_run(process, log, 600)
    federation.timings["run_a_s"] = time.perf_counter() - started
    assert process.returncode == 0, text[-3000:]
    # The run ends with its figures, in its run.log and in what the operator's `launch run` streamed.
    assert "user-level privacy over d=" in (out / "run.log").read_text() and "user-level privacy over d=" in text
    return out, json.loads((out / "metrics.json").read_text()), run_id, attacks


@pytest.fixture(scope="module")
def run_b(federation, run_a):
    """Resume A; SIGKILL the ServerApp process as soon as round 3 is checkpointed, then stop the dead run."""
    a_dir = run_a[0]
    started = time.perf_counter()
    process, log, out = federation.run("b", RUN_B + [f"checkpoint={a_dir / 'checkpoint.pt'}"])
    run_id = federation.run_id(log)
    _wait_for("round 3's checkpoint", lambda: (out / "checkpoint.pt").is_file() and load_checkpoint(out / "checkpoint.pt").round == 3, 600, 0.5)
    serverapps = [p for p in descendants(federation.server.pid) if "flwr-serverapp" in command_line(p) and is_alive(p)]
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


@pytest.fixture(scope="module")
def run_foreign(federation, run_c):
    """The operator (on loopback) submits an app bundle no device approved; its ServerApp waits 20 s for replies."""
    started = time.perf_counter()
    marker = federation.root / "foreign-ran-on-a-device.txt"
    env = {**os.environ, "FLWR_HOME": str(federation.root / "operator-home"), "FLWR_TELEMETRY_ENABLED": "0"}
    result = subprocess.run([FLWR, "run", FOREIGN_APP, "fedpref", "--run-config", f"marker='{marker}'", "--stream"],
                            env=env, capture_output=True, text=True, timeout=300)
    federation.timings["run_foreign_s"] = time.perf_counter() - started
    return result, marker


# ------------------------------------------------------------------------------------------------------ tests
def test_registered_nodes_train_two_rounds_with_user_level_dp_through_the_proxy(federation, run_a):
    out, metrics, _, _ = run_a
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
    superlink = command_line(federation.child("flower-superlink"))
    assert "--enable-supernode-auth" in superlink and "--ssl-certfile" in superlink and "--insecure" not in superlink
    assert f"--host {HOST} " in superlink and "--isolation process" in superlink
    assert f"running on https://{HOST}:{federation.local_port}" in federation.server.log_path.read_text()
    assert all(f"--superlink {federation.public}" in command_line(n.pid) for n in federation.nodes.values())


def test_devices_add_their_own_noise_and_join_by_their_own_coins_under_distributed_dp(federation, run_a):
    """privacy=distributed on the real SuperNodes: each checks in, adds its discrete Gaussian share and sends it
    through SecAgg+; the server releases the decoded noisy sum and says whom the epsilon holds against."""
    process, log, out = federation.run("distributed", COMMON + [
        "privacy=distributed", "secagg.enabled=true", "simulation.rounds=1", "privacy.target_epsilon=8",
        "simulation.round_timeout_s=150"])
    text = _finish_run(process, log, 600)
    assert process.returncode == 0, text[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    (row,) = metrics["rounds"]
    assert row["replies"] == 3 and row["sampled"] == 3 and not row.get("secagg_halted")
    user = metrics["privacy"]["user_level"]
    assert metrics["privacy"]["mode"] == "distributed" and 0 < user["epsilon"] <= 8
    assert user["distributed"]["min_survivors"] == 3 and "1" in user["distributed"]["epsilon_against_server"]


def test_the_run_submitted_the_bundle_the_devices_approved(federation, run_a):
    run = next(r for r in federation.runs() if r["run-id"] == str(run_a[2]))
    assert run["fab-hash"] == federation.app_hash


def test_a_node_with_an_unregistered_key_is_refused_and_told_to_register_it(federation, run_a):
    rogue = federation.rogue
    _wait_for("the unregistered node to give up", lambda: not rogue.running(), 120)
    assert rogue.popen.returncode == 2
    log = rogue.log_path.read_text()
    assert "[code: 2004] Failed to activate SuperNode" in log  # all Flower says
    assert (f"error: this device's key is not registered (or a SuperNode with it is already online): run "
            f"`python -m launch register {federation.root / 'keys' / 'rogue.pub'} --ca ca.pem` on the server") in log
    assert "No SuperNode found with the given public key" in federation.server.log_path.read_text()
    nodes = federation.flwr("supernode", "ls", "fedpref", "--format", "json")
    ids = {int(n) for n in re.findall(r'"node-id":\s*"?(\d+)', nodes.stdout)}
    assert ids == set(federation.node_ids.values()) and len(ids) == 3, nodes.stdout


def test_registering_keys_again_reports_the_registered_one_and_registers_the_rest(federation):
    first, second = federation.registrations
    assert first.returncode == 0 and "node-1.pub: registered as node" in first.stdout
    assert second.returncode == 0, second.stdout + second.stderr
    assert "node-1.pub: already registered" in second.stdout
    assert "node-2.pub: registered as node" in second.stdout and "node-3.pub: registered as node" in second.stdout


# --------------------------------------------------------------------- the outsider, holding only the CA certificate
def _refused_by_the_proxy(result: subprocess.CompletedProcess, route: str) -> None:
    assert f"404 Not Found' for url 'https://{PUBLIC}:" in result.stdout and f"/v1/control/{route}'" in result.stdout, \
        result.stdout[-2000:]


def test_an_outsider_cannot_list_runs_or_nodes_or_read_a_runs_log(federation, run_a):
    _, _, run_id, attacks = run_a
    for attack, route in (("ls", "list-runs"), ("nodes", "list-nodes"), ("log", "stream-logs")):
        _refused_by_the_proxy(attacks[attack], route)
    assert str(run_id) not in attacks["ls"].stdout and "fab-hash" not in attacks["ls"].stdout
    assert not any(str(node) in attacks["nodes"].stdout for node in federation.node_ids.values())
    assert "user-level DP" not in attacks["log"].stdout and "nodes connected" not in attacks["log"].stdout


def test_an_outsider_cannot_stop_the_operators_run(federation, run_a):
    _, metrics, run_id, attacks = run_a
    _refused_by_the_proxy(attacks["stop"], "stop-run")
    assert attacks["stop"].returncode != 0
    run = next(r for r in federation.runs() if r["run-id"] == str(run_id))
    assert run["status"] == "finished:completed" and len(metrics["rounds"]) == 2


def test_an_outsider_cannot_register_its_own_key_or_unregister_an_honest_node(federation, run_a):
    _, metrics, _, attacks = run_a
    _refused_by_the_proxy(attacks["register"], "register-node")
    _refused_by_the_proxy(attacks["unregister"], "unregister-node")
    assert all(r["replies"] == 3 for r in metrics["rounds"])  # node-1 still trained; the rogue never joined
    nodes = federation.flwr("supernode", "ls", "fedpref", "--format", "json").stdout
    assert str(federation.node_ids["node-1"]) in nodes and nodes.count('"node-id"') == 3


def test_an_outsider_cannot_run_its_own_app(run_a):
    attacks = run_a[3]
    _refused_by_the_proxy(attacks["run"], "start-run")
    assert not attacks["marker"].exists()


def test_an_outsider_cannot_take_the_serverapps_task_or_read_the_api_docs(run_a):
    attacks = run_a[3]
    for name in ("acquire-task", "docs", "openapi"):
        assert (attacks[name].status, attacks[name].server, attacks[name].body) == (404, "Caddy", b""), name


def test_every_route_outside_the_fleet_api_is_refused_at_the_public_port(federation, run_a):
    local = Outsider(federation.root / "operator-probe", f"{HOST}:{federation.local_port}", federation.ca)
    spec = json.loads(local.request("GET", "/openapi.json").body)  # the operator can read it, on the server host
    routes = [(method.upper(), path) for path, methods in spec["paths"].items() for method in methods]
    outside = [(m, p) for m, p in routes if not p.startswith("/v1/fleet/")]
    assert len(routes) >= 70 and sorted(p for m, p in routes if p.startswith("/v1/fleet/")) == sorted(FLEET_PATHS)
    outsider = Outsider(federation.root / "outsider-home", federation.public, federation.ca)
    answers = {(m, p): outsider.request(m, p) for m, p in outside + [("GET", p) for p in FLEET_PATHS]}
    assert {(r.status, r.server) for r in answers.values()} == {(404, "Caddy")}, answers
    for path in FLEET_PATHS:  # forwarded, and Flower asks for a registered node's signature
        answer = outsider.request("POST", path)
        assert (answer.status, json.loads(answer.body)) == (401, {"detail": "Invalid SuperNode authentication"}), path
    for tricky in ("/v1/fleet/../control/list-runs", "/v1/fleet/register-node/../../runtime/acquire-task", "//v1/control/list-runs"):
        assert outsider.request("POST", tricky).status == 404, tricky


def test_the_superlink_listens_on_loopback_only_and_its_runtime_api_wants_the_superexec_secret(federation, run_a):
    assert refuses_connections(PUBLIC, federation.local_port)
    local = Outsider(federation.root / "operator-probe", f"{HOST}:{federation.local_port}", federation.ca)
    answer = local.request("POST", "/v1/runtime/acquire-task")  # a local user without the secret
    assert answer.status == 401 and json.loads(answer.body)["code"] == 1008


def test_no_task_token_is_ever_on_a_command_line(federation, run_a):
    kinds = {"flwr-serverapp" if "flwr-serverapp" in cmd else "flwr-clientapp" for cmd in federation.app_processes.values()}
    assert kinds == {"flwr-serverapp", "flwr-clientapp"}, federation.app_processes  # the watch saw both kinds run
    assert all("--token-file /dev/stdin" in cmd for cmd in federation.app_processes.values())
    assert federation.token_lines == []


# ------------------------------------------------------------------------------------------- operator's path
def test_a_config_typo_is_refused_before_submission_and_leaves_no_run_behind(federation, run_a):
    before = len(federation.runs())
    result = subprocess.run(deploy("run", "--output-dir", federation.root / "out" / "typo", *federation.operator,
                                   "simulation.roundz=3"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("error: override simulation.roundz=3: ")
    assert len(result.stderr.strip().splitlines()) == 1 and len(federation.runs()) == before


# ---------------------------------------------------------------------------------------- the failure drills
def test_a_killed_serverapp_resumes_from_its_last_checkpoint_with_the_privacy_ledger_intact(run_a, run_b, run_c):
    a_dir, a = run_a[:2]
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
    c_dir, c, timeout, _ = run_c
    last = c["rounds"][3]
    assert last["sampled"] == 3 and last["replies"] + last["failed"] == 3 and last["failed"] >= 1
    # Besides node-3, a device that had joined round 4 of run B before its ServerApp was killed refuses to join the
    # same round again (its ledger holds it): a replayed round would be a release the run's epsilon never planned.
    # The dead node either never answers or the SuperLink answers for it (node-unavailable).
    problems = [line for line in (c_dir / "run.log").read_text().splitlines() if line.startswith("  node ")]
    refusals = [p for p in problems if not p.endswith("node-unavailable")]
    assert len(refusals) == last["failed"] - 1 and all("policy-round-order" in p for p in refusals), problems
    assert len(problems) - len(refusals) <= 1, problems
    # It waited at most the timeout for the dead node (the SuperLink may report it unavailable sooner: 2 missed
    # heartbeats of 30 s).
    assert last["seconds"] <= timeout + 60


def test_devices_refuse_an_app_bundle_they_did_not_approve(federation, run_foreign):
    result, marker = run_foreign
    # node-3, killed in run C, may still count as connected until it misses two heartbeats
    assert re.search(r"foreign app: asked [23] nodes, 0 answered", result.stdout), result.stdout[-3000:] + result.stderr[-2000:]
    assert not marker.exists()  # its ClientApp never ran on a device
    (foreign_hash,) = {r["fab-hash"] for r in federation.runs()} - {federation.app_hash}
    for name in ("node-1", "node-2"):
        refusals = [line for line in _lines(federation.nodes[name].log_path)
                    if f"its app bundle {foreign_hash} is not in this device's approved apps" in line]
        assert refusals, name


def test_stopping_the_federation_leaves_no_process_and_frees_every_port(federation, run_a, run_b, run_c, run_foreign):
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
    for host, name, port in [(PUBLIC, "proxy", federation.port), (HOST, "superlink", federation.local_port),
                             *((HOST, n, p) for n, p in federation.node_ports.items())]:
        try:
            ensure_port_free(host, port, name)
        except PortInUseError as error:
            pytest.fail(str(error))
    timings = federation.timings | {"round_seconds_a": [round(r["seconds"], 1) for r in run_a[1]["rounds"]],
                                    "round_4_timeout_s": run_c[2]}
    print("\ndeployment timings:", json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in timings.items()}))


# ------------------------------------------------------------------------------- a run nobody takes up
def test_a_run_no_serverapp_takes_up_is_stopped_after_the_start_timeout(tmp_path):
    """A SuperLink whose task launcher is not running: ``flwr run --stream`` alone would wait for ever."""
    port, secret = free_port(), tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    superlink = start("bare-superlink", [str(Path(sys.executable).parent / "flower-superlink"), "--insecure", "--host",
                                         HOST, "--port", str(port), "--isolation", "process",
                                         "--superexec-auth-secret-file", str(secret)],
                      log_path=tmp_path / "superlink.log", env={**os.environ, "FLWR_HOME": str(tmp_path / "home")})
    try:
        superlink.wait_listening(HOST, port, timeout_s=120)
        started = time.perf_counter()
        result = subprocess.run(deploy("run", "--superlink", f"{HOST}:{port}", "--insecure", "--flwr-home",
                                       tmp_path / "operator", "--output-dir", tmp_path / "out", "--start-timeout", 5,
                                       *RUN_A), cwd=ROOT, capture_output=True, text=True, timeout=300)
        elapsed = time.perf_counter() - started
        env = {**os.environ, "FLWR_HOME": str(tmp_path / "operator"), "FLWR_TELEMETRY_ENABLED": "0"}
        runs = json.loads(subprocess.run([FLWR, "ls", "fedpref", "--format", "json"], env=env, capture_output=True,
                                         text=True, timeout=120).stdout)["runs"]
    finally:
        superlink.stop(timeout_s=15)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert re.search(r"error: run \d+ was still pending after --start-timeout 5 s: no ServerApp took it up", result.stderr)
    assert [r["status"] for r in runs] == ["finished:stopped"]
    print(f"\ngave up on a run nobody started in {elapsed:.1f} s (config check, submission, 5 s, stop)")
