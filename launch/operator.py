"""The operator's commands, run on the server host (or through an SSH tunnel) against the SuperLink's loopback
address: ``register`` device keys, ``run`` a training run, ``stop`` a run. Each drives Flower's ``flwr`` CLI."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from launch import certs as certs_module
from launch.approved_apps import bundle_hash
from launch.args import CannotStart, existing_file, flwr_home, host_port, warn_insecure
from launch.flower_commands import (
    flower_environment, list_runs_command, register_command, run_command, stop_run_command, write_run_config,
)
from launch.connection import write_connection

CONNECTION = "fedpref"
ALREADY_REGISTERED = "Public key already in use"
STATUS_POLL_S = 5.0


def connect(args: argparse.Namespace) -> dict[str, str]:
    """Write the ``fedpref`` connection into FLWR_HOME and return the environment for ``flwr``."""
    host_port(args.superlink)
    if args.insecure:
        warn_insecure()
        ca = None
    else:
        ca = existing_file(args.ca, "--ca (the federation's CA certificate)")
        certs_module.check_superlink_tls(args.superlink, ca)  # else Flower reports a wrong CA as a network problem
    home = flwr_home(args)
    write_connection(home, CONNECTION, address=args.superlink, root_certificates=ca)
    return flower_environment(home)


def cmd_register(args: argparse.Namespace) -> int:
    """Register each key; one already registered is reported as such and the others go on (exit 0)."""
    keys = [existing_file(key, "public key") for key in args.public_key]
    env = connect(args)
    failed = 0
    for public_key in keys:
        result = subprocess.run(register_command(public_key, CONNECTION), env=env, capture_output=True, text=True)
        match = re.search(r'"node-id":\s*"?(\d+)', result.stdout)
        if result.returncode == 0 and match:
            print(f"{public_key.name}: registered as node {match.group(1)}")
        elif ALREADY_REGISTERED in result.stdout + result.stderr:
            print(f"{public_key.name}: already registered")
        else:
            print(f"error: registering {public_key} failed:\n{result.stdout}{result.stderr}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def run_status(run_id: int, env: dict[str, str]) -> tuple[str, str]:
    """(status, details) of a run as the SuperLink reports it, e.g. ('finished:completed', 'N/A')."""
    result = subprocess.run(list_runs_command(CONNECTION, run_id), env=env, capture_output=True, text=True)
    try:
        run = json.loads(result.stdout)["runs"][0]
    except (ValueError, KeyError, IndexError):
        return "unknown", (result.stdout + result.stderr).strip()[-500:]
    return str(run["status"]), str(run.get("status-details", ""))


class StartWatch:
    """Stops a run that no ServerApp takes up within ``timeout_s`` (e.g. the task launcher is down): without it,
    ``flwr run --stream`` waits for ever on a pending run."""

    def __init__(self, env: dict[str, str], timeout_s: float) -> None:
        self.env, self.timeout_s = env, timeout_s
        self.gave_up: str | None = None  # the status the run was stuck in

    def watch(self, run_id: int, flwr_run: subprocess.Popen) -> None:
        deadline = time.monotonic() + self.timeout_s
        while flwr_run.poll() is None:
            status, _ = run_status(run_id, self.env)
            if status == "running" or status.startswith("finished"):
                return
            if time.monotonic() >= deadline:
                self.gave_up = status
                subprocess.run(stop_run_command(CONNECTION, run_id), env=self.env, capture_output=True)
                flwr_run.terminate()
                return
            time.sleep(STATUS_POLL_S)


def cmd_run(args: argparse.Namespace) -> int:
    """Check the config here, submit the run, stream its log, and exit 0 only if it completed."""
    from launch.run_check import check_run_config

    overrides = list(args.overrides)
    check_run_config(args.config_name, overrides)  # exit 2 before anything is submitted
    if args.start_timeout <= 0:
        raise CannotStart(f"--start-timeout must be a positive number of seconds; found {args.start_timeout}.")
    env = connect(args)
    output_dir = Path(args.output_dir).expanduser().resolve()
    run_config = write_run_config(output_dir / "run_config.toml", config_name=args.config_name, overrides=overrides,
                                  output_dir=output_dir)
    print(f"app bundle sha256 {bundle_hash(args.app_dir)} (each device's --approved-apps must list it)", flush=True)
    process = subprocess.Popen(run_command(args.app_dir, CONNECTION, run_config), env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    run_id, start_watch = None, StartWatch(env, args.start_timeout)
    for line in process.stdout or []:  # `flwr run --stream` prints the ServerApp's log
        print(line, end="", flush=True)
        match = re.search(r"Successfully started run (\d+)", line)
        if match and run_id is None:
            run_id = int(match.group(1))
            threading.Thread(target=start_watch.watch, args=(run_id, process), daemon=True).start()
    process.wait()
    if run_id is None:
        print("error: the run was not started (see above).", file=sys.stderr)
        return 1
    if start_watch.gave_up is not None:
        print(f"error: run {run_id} was still {start_watch.gave_up} after --start-timeout {args.start_timeout:g} s: no "
              "ServerApp took it up (is `python -m launch superlink` running, with its task launcher?). It was "
              "stopped.", file=sys.stderr)
        return 1
    status, details = run_status(run_id, env)  # `flwr run --stream` exits 0 even when the ServerApp failed
    print(f"run {run_id}: {status}" + (f" ({details})" if details not in ("", "N/A") else "") + f"; outputs in {output_dir}")
    return 0 if status == "finished:completed" else 1


def cmd_stop(args: argparse.Namespace) -> int:
    env = connect(args)
    result = subprocess.run(stop_run_command(CONNECTION, args.run_id), env=env, capture_output=True, text=True)
    status, _ = run_status(args.run_id, env)
    print(f"run {args.run_id}: {status}")
    if not status.startswith("finished"):
        print(f"error: the run did not stop:\n{result.stdout}{result.stderr}", file=sys.stderr)
        return 1
    return 0
