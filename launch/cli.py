"""``python -m launch``: the glue an operator needs around Flower's CLI for a real aggregation server.

Subcommands (each ``--help`` lists its flags):

- ``certs``      a CA and the SuperLink's TLS certificate for the hosts/IPs nodes dial
- ``node-key``   one ECDSA key pair per device (the private key stays on the device)
- ``seed-logs``  device log stores filled with synthetic users (to try a federation on one machine; runs
                 ``python -m simulations.seed_logs``, so the server never imports the synthetic-user generator)
- ``superlink``  start ``flower-superlink`` with TLS and SuperNode authentication (foreground)
- ``supernode``  start ``flower-supernode`` for one device and its log store (foreground)
- ``register``   register device public keys with the SuperLink
- ``run``        submit a training run (``flwr run``) and exit non-zero unless it completed
- ``stop``       stop a run (e.g. one whose ServerApp process died), before resuming it from its checkpoint

Plain TCP without TLS or node authentication needs ``--insecure`` and prints a warning. Exit codes: 0 success,
1 the run failed, 2 the command could not start (missing files, port in use, bad arguments).

Over 300 lines on purpose: one function per subcommand and the argparse tree whose help documents each flag
beside the command that reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from client.log_store import LogStore, LogStoreError
from launch import certs as certs_module
from protocol.node_config import LEDGER_PATH, LOG_DB, PARTITION_ID
from launch.commands import (
    CommandError, flower_environment, list_runs_command, register_command, run_command, stop_run_command,
    superlink_command, supernode_command, write_run_config,
)
from launch.connection import ConnectionConfigError, write_connection
from launch.processes import PortInUseError, ensure_port_free

APP_DIR = Path(__file__).resolve().parents[1]
CONNECTION = "fedpref"
INSECURE_WARNING = ("WARNING: --insecure: traffic is not encrypted and nodes are not authenticated; anyone who can "
                    "reach the port can join or read updates. Use it only for a local test.")


class CannotStart(Exception):
    """A precondition failed; printed as 'error: ...' with exit code 2."""


def _warn_insecure() -> None:
    print(INSECURE_WARNING, file=sys.stderr)


def _flwr_home(args: argparse.Namespace) -> Path:
    return Path(args.flwr_home or os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser().resolve()


def _existing_file(path: str | None, what: str) -> Path:
    if not path:
        raise CannotStart(f"{what} is required (or pass --insecure for a local test).")
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise CannotStart(f"{what} {resolved} does not exist or is not a file.")
    return resolved


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CannotStart(f"SuperLink address {address!r} must be HOST:PORT, e.g. 127.0.0.1:9092.")
    return host, int(port)


# ------------------------------------------------------------------------------------------------ key material
def cmd_certs(args: argparse.Namespace) -> int:
    paths = certs_module.generate_server_certificates(args.out, args.host)
    print(f"CA certificate (give to every node and to flwr): {paths.ca_cert}")
    print(f"SuperLink certificate for {', '.join(args.host)}: {paths.server_cert}")
    print(f"SuperLink private key (keep on the server): {paths.server_key}")
    return 0


def cmd_node_key(args: argparse.Namespace) -> int:
    for name in args.name:
        key = certs_module.generate_node_key(args.out, name)
        print(f"{name}: private key {key.private_key} (stays on the device), public key {key.public_key} (register it)")
    return 0


def cmd_seed_logs(args: argparse.Namespace) -> int:
    """Run ``simulations.seed_logs`` (the synthetic users live in ``simulations/``, which the server never imports)."""
    out = Path(args.out).expanduser().resolve()  # the child runs in the project folder, to find simulations/
    argv = [sys.executable, "-m", "simulations.seed_logs", "--out", str(out), "--devices", str(args.devices),
            "--seed", str(args.seed), "--days", str(args.days), "--first-user", str(args.first_user)]
    print("$ " + " ".join(argv), flush=True)  # stdout: stderr carries only the child's "error: ..." line
    return subprocess.run(argv, cwd=APP_DIR).returncode


# ----------------------------------------------------------------------------------------------- processes
def superlink_argv(args: argparse.Namespace) -> list[str]:
    """Check what ``flower-superlink`` needs (certificates, a free port) and return its command line."""
    certificates = None
    if args.insecure:
        _warn_insecure()
    else:
        if not args.certs:
            raise CannotStart("--certs DIR (from `python -m launch certs`) is required, or --insecure for a local test.")
        certificates = certs_module.server_certificates(Path(args.certs).expanduser().resolve())
        try:
            certificates.check()
        except certs_module.CertificateError as error:
            raise CannotStart(str(error)) from None
        hosts = certs_module.certificate_hosts(certificates.server_cert)
        if args.host not in hosts and args.host not in ("0.0.0.0", "::"):
            print(f"warning: the certificate is for {hosts}, not {args.host}; nodes must dial one of those names.", file=sys.stderr)
    ensure_port_free(args.host, args.port, "SuperLink")
    state = Path(args.state).expanduser().resolve()
    _private_state_file(state)
    return superlink_command(host=args.host, port=args.port, database=state, certificates=certificates)


def _private_state_file(state: Path) -> None:
    """Create the SuperLink's state database with mode 0600, or make an existing one (and its journals) 0600: it
    holds the registered nodes' public keys and every run. SQLite gives new journal files the database's mode."""
    state.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(state, os.O_CREAT | os.O_WRONLY, 0o600))
    for part in (state, Path(f"{state}-wal"), Path(f"{state}-shm"), Path(f"{state}-journal")):
        if part.exists():
            os.chmod(part, 0o600)


def supernode_argv(args: argparse.Namespace) -> list[str]:
    """Check what ``flower-supernode`` needs (CA, key, log store, a free local port) and return its command line."""
    _host_port(args.superlink)
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
    if args.insecure:
        _warn_insecure()
        ca = key = None
    else:
        ca = _existing_file(args.ca, "--ca (the federation's CA certificate)")
        key = _existing_file(args.key, "--key (this node's private key from `node-key`)")
    ensure_port_free("127.0.0.1", args.port, "SuperNode runtime API (--port, one per node on a machine)")
    return supernode_command(superlink=args.superlink, runtime_port=args.port, node_config=node_config,
                             root_certificates=ca, private_key=key, max_retries=args.max_retries)


def _exec(argv: list[str], env: dict[str, str]) -> int:
    print("$ " + " ".join(argv), file=sys.stderr, flush=True)
    os.umask(0o077)  # whatever Flower writes (state, app bundles, node keys' caches) is the owner's only
    os.execve(argv[0], argv, env)
    return 0  # not reached


def cmd_superlink(args: argparse.Namespace) -> int:
    return _exec(superlink_argv(args), flower_environment(_flwr_home(args)))


def cmd_supernode(args: argparse.Namespace) -> int:
    return _exec(supernode_argv(args), flower_environment(_flwr_home(args)))


# ------------------------------------------------------------------------------------------------- control
def _connect(args: argparse.Namespace) -> dict[str, str]:
    """Write the ``fedpref`` connection into FLWR_HOME and return the environment for ``flwr``."""
    _host_port(args.superlink)
    if args.insecure:
        _warn_insecure()
        ca = None
    else:
        ca = _existing_file(args.ca, "--ca (the federation's CA certificate)")
        certs_module.check_superlink_tls(args.superlink, ca)  # else Flower reports a wrong CA as a network problem
    home = _flwr_home(args)
    write_connection(home, CONNECTION, address=args.superlink, root_certificates=ca)
    return flower_environment(home)


def cmd_register(args: argparse.Namespace) -> int:
    env = _connect(args)
    for key in args.public_key:
        public_key = _existing_file(key, "public key")
        result = subprocess.run(register_command(public_key, CONNECTION), env=env, capture_output=True, text=True)
        match = re.search(r'"node-id":\s*(\d+)', result.stdout)
        if result.returncode != 0 or not match:
            print(f"error: registering {public_key} failed:\n{result.stdout}{result.stderr}", file=sys.stderr)
            return 1
        print(f"{public_key.name}: registered as node {match.group(1)}")
    return 0


def run_status(run_id: int, env: dict[str, str]) -> tuple[str, str]:
    """(status, details) of a run as the SuperLink reports it, e.g. ('finished:completed', 'N/A')."""
    result = subprocess.run(list_runs_command(CONNECTION, run_id), env=env, capture_output=True, text=True)
    try:
        run = json.loads(result.stdout)["runs"][0]
    except (ValueError, KeyError, IndexError):
        return "unknown", (result.stdout + result.stderr).strip()[-500:]
    return str(run["status"]), str(run.get("status-details", ""))


def cmd_run(args: argparse.Namespace) -> int:
    env = _connect(args)
    output_dir = Path(args.output_dir).expanduser().resolve()
    run_config = write_run_config(output_dir / "run_config.toml", config_name=args.config_name,
                                  overrides=list(args.overrides), output_dir=output_dir)
    process = subprocess.Popen(run_command(args.app_dir, CONNECTION, run_config), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    run_id = None
    for line in process.stdout or []:  # `flwr run --stream` prints the ServerApp's log
        print(line, end="", flush=True)
        match = re.search(r"Successfully started run (\d+)", line)
        if match:
            run_id = int(match.group(1))
    process.wait()
    if run_id is None:
        print("error: the run was not started (see above).", file=sys.stderr)
        return 1
    status, details = run_status(run_id, env)  # `flwr run --stream` exits 0 even when the ServerApp failed
    print(f"run {run_id}: {status}" + (f" ({details})" if details not in ("", "N/A") else "") + f"; outputs in {output_dir}")
    return 0 if status == "finished:completed" else 1


def cmd_stop(args: argparse.Namespace) -> int:
    env = _connect(args)
    result = subprocess.run(stop_run_command(CONNECTION, args.run_id), env=env, capture_output=True, text=True)
    status, _ = run_status(args.run_id, env)
    print(f"run {args.run_id}: {status}")
    if not status.startswith("finished"):
        print(f"error: the run did not stop:\n{result.stdout}{result.stderr}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch", description="Glue around Flower's CLI for a real aggregation server.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("certs", help="CA + SuperLink TLS certificate")
    p.add_argument("--out", required=True, help="folder for ca.pem, server.pem, server.key")
    p.add_argument("--host", action="append", required=True, help="IP or DNS name nodes dial (repeat for several)")
    p.set_defaults(func=cmd_certs)

    p = sub.add_parser("node-key", help="ECDSA key pair(s) for SuperNode authentication")
    p.add_argument("--out", required=True, help="folder for NAME.key and NAME.pub")
    p.add_argument("--name", action="append", required=True, help="node name (repeat for several)")
    p.set_defaults(func=cmd_node_key)

    p = sub.add_parser("seed-logs", help="log stores of synthetic users, one per node (for trying a federation)")
    p.add_argument("--out", required=True, help="folder; writes OUT/node-1/events.db ...")
    p.add_argument("--devices", type=int, default=3, help="how many nodes' logs to write (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic population (default: %(default)s)")
    p.add_argument("--days", type=int, default=21,
                   help="days of listening per user, 1 to 366 (default: %(default)s)")
    p.add_argument("--first-user", type=int, default=0,
                   help="synthetic user of node-1; node-i gets user FIRST_USER + i - 1 (default: %(default)s)")
    p.set_defaults(func=cmd_seed_logs)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (local tests only)")
        q.add_argument("--flwr-home", help="Flower's config folder (default: $FLWR_HOME or ~/.flwr)")

    p = sub.add_parser("superlink", help="start flower-superlink (TLS + node authentication)")
    p.add_argument("--certs", help="folder with ca.pem, server.pem, server.key")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=9092,
                   help="the one port for Fleet, Control and Runtime APIs (default: %(default)s)")
    p.add_argument("--state", default="deploy/superlink/state.db",
                   help="SQLite file for the SuperLink's state (registered nodes, runs), kept with mode 0600 "
                        "(default: %(default)s, from the current folder)")
    common(p)
    p.set_defaults(func=cmd_superlink)

    p = sub.add_parser("supernode", help="start flower-supernode for one device")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    p.add_argument("--ca", help="the federation's CA certificate (ca.pem)")
    p.add_argument("--key", help="this node's private key (NAME.key)")
    p.add_argument("--log-db", help="this device's log store (SQLite)")
    p.add_argument("--partition-id", type=int, help="instead of --log-db: train on synthetic user N")
    p.add_argument("--ledger-path", help="record-level privacy ledger (default: next to the log)")
    p.add_argument("--port", type=int, default=9094,
                   help="local port for this node's ClientApp processes, unique per node (default: %(default)s)")
    p.add_argument("--max-retries", type=int,
                   help="give up after this many failed connection attempts (default: retry for ever)")
    common(p)
    p.set_defaults(func=cmd_supernode)

    p = sub.add_parser("register", help="register device public keys with the SuperLink")
    p.add_argument("public_key", nargs="+", help="NAME.pub files")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    p.add_argument("--ca", help="the federation's CA certificate")
    common(p)
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("run", help="submit a training run and wait for it")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. simulation.rounds=20 secagg.enabled=true")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    p.add_argument("--ca", help="the federation's CA certificate")
    p.add_argument("--output-dir", required=True, help="where the server writes metrics.json, checkpoint.pt, plots")
    p.add_argument("--config-name", default="deploy", help="primary config in conf/ (default: deploy)")
    p.add_argument("--app-dir", default=str(APP_DIR), help="the Flower app to submit (default: this project)")
    common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("stop", help="stop a run")
    p.add_argument("run_id", type=int, help="the run's id, as `flwr ls` or the `run` command printed it")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the SuperLink")
    p.add_argument("--ca", help="the federation's CA certificate")
    common(p)
    p.set_defaults(func=cmd_stop)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CannotStart, PortInUseError, certs_module.CertificateError, CommandError, ConnectionConfigError,
            LogStoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
