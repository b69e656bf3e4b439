"""The command lines of Flower's own tools for a real deployment, built in one place with the right flags.

``flower-superlink`` (Fleet, Control and Runtime APIs on one port, on 127.0.0.1), ``flower-supernode`` (one per
device), each beside a ``launch.task_launcher`` (process isolation), and ``flwr supernode register``, ``flwr run``,
``flwr ls`` and ``flwr stop``. Every command runs from this project's venv and never lets Flower
build a runtime environment (``--disable-runtime-dependency-installation`` and
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``: ``uv sync`` would resolve torch from an index).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import tomli_w

from launch.certs import ServerCertificates

BIN_DIR = Path(sys.executable).parent
"""The venv's bin folder: Flower finds its helper executables (flwr-serverapp, flwr-clientapp) on PATH."""
LOOPBACK = "127.0.0.1"


class CommandError(ValueError):
    """A command that cannot be built as asked; the message names the value and the rule."""


def flower_environment(flwr_home: str | os.PathLike[str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for every Flower process: this venv first on PATH, a private FLWR_HOME, no runtime env."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    return env


def superlink_command(*, port: int, database: str | os.PathLike[str], certificates: ServerCertificates | None,
                      secret_file: str | os.PathLike[str]) -> list[str]:
    """``flower-superlink`` on 127.0.0.1 only (the proxy serves the public port), in process isolation with the
    SuperExec auth secret (``launch.task_launcher`` starts the ServerApp), with TLS and SuperNode authentication, or
    ``--insecure`` when ``certificates`` is None."""
    argv = [str(BIN_DIR / "flower-superlink"), "--host", LOOPBACK, "--port", str(port), "--database", str(database),
            "--disable-runtime-dependency-installation", "--isolation", "process",
            "--superexec-auth-secret-file", str(secret_file)]
    if certificates is None:
        return argv + ["--insecure"]
    return argv + ["--ssl-ca-certfile", str(certificates.ca_cert), "--ssl-certfile", str(certificates.server_cert),
                   "--ssl-keyfile", str(certificates.server_key), "--enable-supernode-auth"]


def task_launcher_command(*, runtime_api_address: str, root_certificates: str | os.PathLike[str] | None,
                          secret_file: str | os.PathLike[str], parent_pid: int,
                          approved_apps: str | os.PathLike[str] | None = None) -> list[str]:
    """``python -m launch.task_launcher``: Flower's SuperExec with the task token on stdin and, on a device, only
    approved app bundles; it exits with ``parent_pid`` (the SuperLink or SuperNode it serves)."""
    argv = [sys.executable, "-m", "launch.task_launcher", "--runtime-api-address", runtime_api_address,
            "--secret-file", str(secret_file), "--parent-pid", str(parent_pid)]
    if root_certificates is not None:
        argv += ["--root-certificates", str(root_certificates)]
    if approved_apps is not None:
        argv += ["--approved-apps", str(approved_apps)]
    return argv


def node_config_text(values: Mapping[str, object]) -> str:
    """Flower's ``--node-config`` string: space-separated ``key=value``, strings quoted (no escapes exist there)."""
    parts = []
    for key, value in values.items():
        if not key or any(c.isspace() or c in "='\"" for c in key):
            raise CommandError(f"node config key {key!r} must not contain spaces, '=' or quotes.")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            value = str(value)
            if '"' not in value:
                text = f'"{value}"'
            elif "'" not in value:
                text = f"'{value}'"
            else:
                raise CommandError(f"node config {key}={value!r}: a value cannot hold both ' and \" (Flower's parser has no escapes).")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def supernode_command(*, superlink: str, runtime_port: int, node_config: Mapping[str, object],
                      root_certificates: str | os.PathLike[str] | None, private_key: str | os.PathLike[str] | None,
                      secret_file: str | os.PathLike[str], max_retries: int | None = None) -> list[str]:
    """``flower-supernode`` for one device: TLS (``root_certificates`` = the federation CA) and its auth key, or
    ``--insecure`` when ``root_certificates`` is None. Process isolation with the SuperExec auth secret:
    ``launch.task_launcher`` starts its ClientApps. ``runtime_port`` is the node's own port on 127.0.0.1, where its
    task launcher and ClientApp processes connect; it must differ between nodes on one machine."""
    argv = [str(BIN_DIR / "flower-supernode"), "--superlink", superlink, "--host", LOOPBACK, "--port", str(runtime_port),
            "--node-config", node_config_text(node_config), "--isolation", "process",
            "--superexec-auth-secret-file", str(secret_file)]
    if root_certificates is None:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(root_certificates)]
    if private_key is not None:
        argv += ["--auth-supernode-private-key", str(private_key)]
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    return argv


def register_command(public_key: str | os.PathLike[str], connection: str) -> list[str]:
    """``flwr supernode register``: allow the node holding the matching private key to join."""
    return [str(BIN_DIR / "flwr"), "supernode", "register", str(public_key), connection, "--format", "json"]


def write_run_config(path: str | os.PathLike[str], *, config_name: str, overrides: list[str], output_dir: str | os.PathLike[str]) -> Path:
    """The run config TOML ``flwr run --run-config FILE`` reads (a file avoids shell quoting of the overrides).

    Raises:
        CommandError: if ``output_dir`` is relative (the ServerApp's working directory is the SuperLink's).
    """
    if not Path(output_dir).is_absolute():
        raise CommandError(f"output dir {str(output_dir)!r} must be an absolute path: the ServerApp runs in the SuperLink's working directory.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps({"config-name": config_name, "overrides": json.dumps(overrides), "output-dir": str(output_dir)}))
    return path


def run_command(app_dir: str | os.PathLike[str], connection: str, run_config_file: str | os.PathLike[str], *, stream: bool = True) -> list[str]:
    """``flwr run``: package the app at ``app_dir`` and submit it to the SuperLink named ``connection``."""
    argv = [str(BIN_DIR / "flwr"), "run", str(app_dir), connection, "--run-config", str(run_config_file)]
    return argv + ["--stream"] if stream else argv


def list_runs_command(connection: str, run_id: int | None = None) -> list[str]:
    argv = [str(BIN_DIR / "flwr"), "ls", connection, "--format", "json"]
    return argv + ["--run-id", str(run_id)] if run_id is not None else argv


def stop_run_command(connection: str, run_id: int) -> list[str]:
    return [str(BIN_DIR / "flwr"), "stop", str(run_id), connection, "--format", "json"]
