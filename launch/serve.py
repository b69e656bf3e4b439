"""``launch superlink`` and ``launch supernode``: each a group of processes run together in the foreground.

The server: ``flower-superlink`` on 127.0.0.1 (Fleet, Control and Runtime APIs), its task launcher (Flower's
SuperExec with the auth secret; it starts the ServerApp, token on stdin) and Caddy on the public address, forwarding
the Fleet API only (``launch.proxy``). A device: ``flower-supernode`` and its task launcher, which starts ClientApps
of approved app bundles only. ``plan_*`` check everything and build the command lines without starting anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from client.log_store import LogStore, LogStoreError
from launch import certs as certs_module
from launch.approved_apps import ApprovedAppsError, read_approved_apps
from launch.args import CannotStart, existing_file, flwr_home, host_port, warn_insecure
from launch.flower_commands import (
    LOOPBACK, flower_environment, supernode_command, superlink_command, task_launcher_command,
)
from launch.processes import ensure_port_free, is_listening
from launch.proxy import caddy_command, caddy_environment, write_caddy_config
from launch.supervisor import Supervisor
from privacy.errors import PrivacyConfigError
from protocol.node_config import DEVICE_STORAGE, LEDGER_PATH, LOG_DB, PARTITION_ID, PRIVACY_POLICY

START_TIMEOUT_S = 120.0
ACTIVATION_REFUSED = "[code: 2004]"
"""What ``flower-supernode`` prints when the SuperLink refuses to activate its key (Flower's FLEET_NODE_ACTIVATION_FAILED)."""


@dataclass(frozen=True)
class SuperLinkPlan:
    """What ``launch superlink`` starts, checked: the SuperLink's, task launcher's and proxy's command lines."""

    superlink: list[str]
    local_port: int
    public: tuple[str, int]
    certificates: certs_module.ServerCertificates | None
    secret_file: Path
    caddy: list[str]
    proxy_dir: Path


def _private_state_file(state: Path) -> None:
    """Create the SuperLink's state database with mode 0600, or make an existing one (and its journals) 0600: it
    holds the registered nodes' public keys and every run. SQLite gives new journal files the database's mode."""
    state.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(state, os.O_CREAT | os.O_WRONLY, 0o600))
    for part in (state, Path(f"{state}-wal"), Path(f"{state}-shm"), Path(f"{state}-journal")):
        if part.exists():
            os.chmod(part, 0o600)


def _server_certificates(args: argparse.Namespace) -> certs_module.ServerCertificates | None:
    if args.insecure:
        warn_insecure()
        return None
    if not args.certs:
        raise CannotStart("--certs DIR (from `python -m launch certs`) is required, or --insecure for a local test.")
    certificates = certs_module.server_certificates(Path(args.certs).expanduser().resolve())
    certificates.check()
    hosts = certs_module.certificate_hosts(certificates.server_cert)
    if LOOPBACK not in hosts:
        raise CannotStart(f"the certificate {certificates.server_cert} lists {hosts} but not {LOOPBACK}, where the "
                          "proxy and the operator's flwr reach the SuperLink; create it again with `python -m launch "
                          f"certs --host {args.host}` (which adds {LOOPBACK}).")
    if args.host not in hosts and args.host not in ("0.0.0.0", "::"):
        print(f"warning: the certificate is for {hosts}, not {args.host}; devices must dial one of those names.",
              file=sys.stderr)
    return certificates


def plan_superlink(args: argparse.Namespace) -> SuperLinkPlan:
    """Check what the server needs (certificates, free ports, caddy) and build its command lines."""
    certificates = _server_certificates(args)
    if args.local_port == args.port and args.host in (LOOPBACK, "0.0.0.0", "::"):
        raise CannotStart(f"--local-port {args.local_port} must differ from --port {args.port}: the proxy listens on "
                          f"{args.host}:{args.port} and the SuperLink on {LOOPBACK}:{args.local_port}.")
    ensure_port_free(args.host, args.port, "public port (the proxy, --host/--port)")
    ensure_port_free(LOOPBACK, args.local_port, "SuperLink (--local-port)")
    state = Path(args.state).expanduser().resolve()
    _private_state_file(state)
    secret = state.parent / "superexec.secret"
    proxy_dir = state.parent / "proxy"
    config = write_caddy_config(proxy_dir, listen_host=args.host, listen_port=args.port, superlink_port=args.local_port,
                                certificates=certificates)
    return SuperLinkPlan(superlink_command(port=args.local_port, database=state, certificates=certificates,
                                           secret_file=secret),
                         args.local_port, (args.host, args.port), certificates, secret, caddy_command(config), proxy_dir)


def _wait_listening(supervisor: Supervisor, host: str, port: int) -> None:
    """Return once ``host:port`` accepts connections, or once a child has exited (``wait`` then reports it).

    Raises:
        CannotStart: if nothing listens there within ``START_TIMEOUT_S`` (every child is stopped first).
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while supervisor.running() and not is_listening(host, port):
        if time.monotonic() > deadline:
            supervisor.stop()
            raise CannotStart(f"nothing listened on {host}:{port} within {START_TIMEOUT_S:.0f} s; stopped everything "
                              "(see the output above).")
        time.sleep(0.2)


def run_superlink(args: argparse.Namespace) -> int:
    """Start the SuperLink, its task launcher and the proxy; stop all three when one exits or on Ctrl-C."""
    plan = plan_superlink(args)
    env = flower_environment(flwr_home(args))
    os.umask(0o077)  # whatever Flower and Caddy write (state, app bundles, caches) is the owner's only
    certs_module.write_superexec_secret(plan.secret_file)
    supervisor = Supervisor()
    superlink = supervisor.start("superlink", plan.superlink, env)
    _wait_listening(supervisor, LOOPBACK, plan.local_port)
    if supervisor.running():
        ca = plan.certificates.ca_cert if plan.certificates else None
        supervisor.start("task-launcher", task_launcher_command(
            runtime_api_address=f"{LOOPBACK}:{plan.local_port}", root_certificates=ca, secret_file=plan.secret_file,
            parent_pid=superlink.pid), env)
        supervisor.start("proxy", plan.caddy, caddy_environment(plan.proxy_dir, env))
        _wait_listening(supervisor, *plan.public)
    if supervisor.running():
        host, port = plan.public
        print(f"ready: devices dial {host}:{port} (Fleet API only); on this host, `python -m launch register/run/"
              f"stop --superlink {LOOPBACK}:{plan.local_port}` and flwr reach the SuperLink.", file=sys.stderr,
              flush=True)
    outcome = supervisor.wait()
    if outcome.exited is None:
        return 0
    print(f"error: {outcome.exited} exited with code {outcome.returncode}; stopped the others (see its output above).",
          file=sys.stderr)
    return 1


# --------------------------------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class SuperNodePlan:
    """What ``launch supernode`` starts, checked."""

    supernode: list[str]
    runtime_address: str
    secret_file: Path
    approved_apps: Path
    public_key: Path | None


def _node_config(args: argparse.Namespace) -> dict[str, object]:
    node_config: dict[str, object] = {}
    if args.log_db:
        path = Path(args.log_db).expanduser().resolve()
        try:
            LogStore.open(path, create=False).close()
        except LogStoreError as error:
            raise CannotStart(f"--log-db: {error} Create it with `python -m client.logs import FILE --db {path}`.") from None
        node_config[LOG_DB] = str(path)
    elif args.partition_id is not None:
        node_config[PARTITION_ID] = args.partition_id
    else:
        raise CannotStart("say where this device's data is: --log-db PATH (its log store) or --partition-id N (a synthetic user).")
    if args.ledger_path:
        node_config[LEDGER_PATH] = str(Path(args.ledger_path).expanduser().resolve())
    if args.device_storage:
        node_config[DEVICE_STORAGE] = str(Path(args.device_storage).expanduser().resolve())
    if args.privacy_policy:
        from client.privacy_policy import load_policy  # imports torch (through the instructions' model config)

        policy = existing_file(args.privacy_policy, "--privacy-policy (this device's privacy policy, a JSON file)")
        try:
            load_policy({PRIVACY_POLICY: str(policy)})
        except PrivacyConfigError as error:
            raise CannotStart(f"--privacy-policy: {error}") from None
        node_config[PRIVACY_POLICY] = str(policy)
    return node_config


def _approved_apps(path: str | None) -> Path:
    if not path:
        raise CannotStart("--approved-apps FILE is required: the SHA-256 of each app bundle this device may run, one "
                          "per line (`python -m launch app-hash > FILE` writes the hash of the bundle the operator "
                          "submits from that app folder).")
    resolved = Path(path).expanduser().resolve()
    try:
        read_approved_apps(resolved)
    except ApprovedAppsError as error:
        raise CannotStart(f"--approved-apps: {error}") from None
    return resolved


def plan_supernode(args: argparse.Namespace) -> SuperNodePlan:
    """Check what ``flower-supernode`` needs (CA, key, log store, approved apps, a free local port); build its argv."""
    host_port(args.superlink)
    node_config = _node_config(args)
    approved = _approved_apps(args.approved_apps)
    if args.insecure:
        warn_insecure()
        ca = key = None
    else:
        ca = existing_file(args.ca, "--ca (the federation's CA certificate)")
        key = existing_file(args.key, "--key (this node's private key from `node-key`)")
    ensure_port_free(LOOPBACK, args.port, "SuperNode runtime API (--port, one per node on a machine)")
    secret = flwr_home(args) / "superexec.secret"
    argv = supernode_command(superlink=args.superlink, runtime_port=args.port, node_config=node_config,
                             root_certificates=ca, private_key=key, secret_file=secret, max_retries=args.max_retries)
    return SuperNodePlan(argv, f"{LOOPBACK}:{args.port}", secret, approved, key.with_suffix(".pub") if key else None)


class ActivationWatch:
    """Notices, in ``flower-supernode``'s output, that the SuperLink refused to activate this device's key."""

    refused = False

    def __call__(self, line: str) -> None:
        if ACTIVATION_REFUSED in line:
            self.refused = True


def run_supernode(args: argparse.Namespace) -> int:
    """Start the SuperNode and its task launcher; stop both when one exits or on Ctrl-C."""
    plan = plan_supernode(args)
    env = flower_environment(flwr_home(args))
    os.umask(0o077)
    certs_module.write_superexec_secret(plan.secret_file)
    supervisor, watch = Supervisor(), ActivationWatch()
    supernode = supervisor.start("supernode", plan.supernode, env, watch=watch)
    supervisor.start("task-launcher", task_launcher_command(
        runtime_api_address=plan.runtime_address, root_certificates=None, secret_file=plan.secret_file,
        parent_pid=supernode.pid, approved_apps=plan.approved_apps), env)
    outcome = supervisor.wait()
    if outcome.exited is None:
        return 0
    if watch.refused:
        public_key = plan.public_key or "KEY.pub"
        print(f"error: this device's key is not registered (or a SuperNode with it is already online): run "
              f"`python -m launch register {public_key} --ca ca.pem` on the server, then start this device again.",
              file=sys.stderr)
        return 2
    print(f"error: {outcome.exited} exited with code {outcome.returncode}; stopped the others (see its output above).",
          file=sys.stderr)
    return 1
