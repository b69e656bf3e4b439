"""``python -m launch``: the glue an operator needs around Flower's CLI for a real aggregation server.

Subcommands (each ``--help`` lists its flags):

- ``certs``      a CA and the SuperLink's TLS certificate for the hosts/IPs devices dial (127.0.0.1 is always added)
- ``node-key``   one ECDSA key pair per device (the private key stays on the device)
- ``app-hash``   the SHA-256 of the app bundle ``run`` submits: what each device's approved-apps file lists
- ``superlink``  the server in the foreground: ``flower-superlink`` on 127.0.0.1, its task launcher, and Caddy on
                 the public address forwarding only the devices' Fleet API (``launch.serve``, ``launch.proxy``)
- ``supernode``  one device in the foreground: ``flower-supernode`` and its task launcher (approved apps only)
- ``register``   register device public keys with the SuperLink (a key already registered is reported, not an error)
- ``run``        check the config locally, submit a training run (``flwr run``), exit non-zero unless it completed
- ``stop``       stop a run (e.g. one whose ServerApp process died), before resuming it from its checkpoint

This module is the entry point: the parser, the dispatch and the key-material subcommands. ``superlink`` and
``supernode`` are implemented in ``launch.serve``, ``register``, ``run`` and ``stop`` in ``launch.operator``; the
command lines of Flower's own tools they start are built in ``launch.flower_commands``.

``register``, ``run`` and ``stop`` reach the SuperLink on 127.0.0.1 (run them on the server host, or through an SSH
tunnel). Plain TCP without TLS or node authentication needs ``--insecure`` and prints a warning. Exit codes:
0 success, 1 the run failed, 2 the command could not start (missing files, port in use, bad arguments or config, a
device key that is not registered).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from launch import certs as certs_module
from launch.approved_apps import ApprovedAppsError
from launch.args import CannotStart
from launch.flower_commands import CommandError
from launch.connection import ConnectionConfigError
from launch.processes import PortInUseError
from launch.proxy import ProxyError

APP_DIR = Path(__file__).resolve().parents[1]
LOCAL_SUPERLINK = "127.0.0.1:9093"


# ------------------------------------------------------------------------------------------------ key material
def cmd_certs(args: argparse.Namespace) -> int:
    hosts = list(args.host) + ([] if "127.0.0.1" in args.host else ["127.0.0.1"])  # the proxy and flwr dial it
    paths = certs_module.generate_server_certificates(args.out, hosts)
    print(f"CA certificate (give to every node and to flwr): {paths.ca_cert}")
    print(f"SuperLink certificate for {', '.join(hosts)}: {paths.server_cert}")
    print(f"SuperLink private key (keep on the server): {paths.server_key}")
    return 0


def cmd_node_key(args: argparse.Namespace) -> int:
    for name in args.name:
        key = certs_module.generate_node_key(args.out, name)
        print(f"{name}: private key {key.private_key} (stays on the device), public key {key.public_key} (register it)")
    return 0


def cmd_app_hash(args: argparse.Namespace) -> int:
    """Print the bundle's hash alone on stdout (``app-hash >> approved-apps.txt``)."""
    from launch.approved_apps import bundle_hash

    app_dir = Path(args.app_dir).expanduser().resolve()
    if not (app_dir / "pyproject.toml").is_file():
        raise CannotStart(f"--app-dir {app_dir} has no pyproject.toml: it is not a Flower app folder.")
    print(bundle_hash(app_dir))
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

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (local tests only)")
        q.add_argument("--flwr-home", help="Flower's config folder (default: $FLWR_HOME or ~/.flwr)")

    def operator(q: argparse.ArgumentParser) -> None:
        q.add_argument("--superlink", default=LOCAL_SUPERLINK,
                       help="HOST:PORT of the SuperLink's own (loopback) port: run on the server host, or through an "
                            "SSH tunnel to it (default: %(default)s)")
        q.add_argument("--ca", help="the federation's CA certificate")
        common(q)

    p = sub.add_parser("app-hash", help="SHA-256 of the app bundle `run` submits (what devices approve)")
    p.add_argument("--app-dir", default=str(APP_DIR), help="the Flower app folder (default: this project)")
    p.set_defaults(func=cmd_app_hash)

    p = sub.add_parser("superlink", help="the server: SuperLink on 127.0.0.1, task launcher, Fleet-only proxy")
    p.add_argument("--certs", help="folder with ca.pem, server.pem, server.key")
    p.add_argument("--host", default="127.0.0.1",
                   help="public address the proxy listens on for devices; 0.0.0.0 for every interface "
                        "(default: %(default)s)")
    p.add_argument("--port", type=int, default=9092, help="public port: devices' Fleet API only (default: %(default)s)")
    p.add_argument("--local-port", type=int, default=9093,
                   help="the SuperLink's port on 127.0.0.1: Fleet, Control and Runtime APIs, for the proxy, flwr and "
                        "the ServerApp (default: %(default)s)")
    p.add_argument("--state", default="deploy/superlink/state.db",
                   help="SQLite file for the SuperLink's state (registered nodes, runs), kept with mode 0600; the "
                        "proxy's config and the SuperExec secret go beside it (default: %(default)s, from the current "
                        "folder)")
    common(p)
    p.set_defaults(func="launch.serve:run_superlink")

    p = sub.add_parser("supernode", help="one device: flower-supernode and its task launcher (approved apps only)")
    p.add_argument("--superlink", required=True, help="HOST:PORT of the server's public port")
    p.add_argument("--ca", help="the federation's CA certificate (ca.pem)")
    p.add_argument("--key", help="this node's private key (NAME.key)")
    p.add_argument("--approved-apps",
                   help="file of the app bundle hashes this device runs, one per line (`python -m launch app-hash` "
                        "prints a bundle's hash)")
    p.add_argument("--log-db", help="this device's log store (SQLite)")
    p.add_argument("--partition-id", type=int, help="instead of --log-db: train on synthetic user N")
    p.add_argument("--ledger-path", help="this device's privacy ledger (default: next to the log)")
    p.add_argument("--device-storage",
                   help="folder where this device keeps the last global prior for its app (the device room; default: "
                        "LOG.device/ next to --log-db)")
    p.add_argument("--privacy-policy",
                   help="this device's privacy policy, a JSON file of client.privacy_policy.DevicePrivacyPolicy's "
                        "fields (default: the safe defaults: user-level DP required, z >= 0.5, at most epsilon 10 a "
                        "run and 40 over the device's life, 24 rounds a day)")
    p.add_argument("--port", type=int, default=9094,
                   help="port on 127.0.0.1 for this node's task launcher and ClientApp processes, unique per node "
                        "(default: %(default)s)")
    p.add_argument("--max-retries", type=int,
                   help="give up after this many failed connection attempts (default: retry for ever)")
    common(p)
    p.set_defaults(func="launch.serve:run_supernode")

    p = sub.add_parser("register", help="register device public keys with the SuperLink")
    p.add_argument("public_key", nargs="+", help="NAME.pub files")
    operator(p)
    p.set_defaults(func="launch.operator:cmd_register")

    p = sub.add_parser("run", help="check the config, submit a training run and wait for it")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. simulation.rounds=20 secagg.enabled=true")
    p.add_argument("--output-dir", required=True, help="where the server writes metrics.json, checkpoint.pt, plots")
    p.add_argument("--config-name", default="deploy", help="primary config in conf/ (default: deploy)")
    p.add_argument("--app-dir", default=str(APP_DIR), help="the Flower app to submit (default: this project)")
    p.add_argument("--start-timeout", type=float, default=120.0,
                   help="seconds the run may wait for the server to start its ServerApp; after that it is stopped "
                        "and `run` exits 1 (default: %(default)s)")
    operator(p)
    p.set_defaults(func="launch.operator:cmd_run")

    p = sub.add_parser("stop", help="stop a run")
    p.add_argument("run_id", type=int, help="the run's id, as `flwr ls` or the `run` command printed it")
    operator(p)
    p.set_defaults(func="launch.operator:cmd_stop")
    return parser


def _command(func: Callable[[argparse.Namespace], int] | str) -> Callable[[argparse.Namespace], int]:
    """A subcommand's function; ``"module:name"`` is imported only when that subcommand runs (``--help`` stays quick)."""
    if callable(func):
        return func
    module, _, name = func.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> int:
    from client.log_store import LogStoreError
    from launch.run_check import RunConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(_command(args.func)(args))
    except (CannotStart, PortInUseError, certs_module.CertificateError, CommandError, ConnectionConfigError,
            LogStoreError, ApprovedAppsError, ProxyError, RunConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
