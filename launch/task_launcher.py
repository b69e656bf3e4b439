"""Flower's SuperExec, started by ``python -m launch`` beside a SuperLink or SuperNode in process isolation.

Flower's ``flower-superexec`` (1.42) asks the Runtime API for tasks (``AcquireTask``, signed with the SuperExec auth
secret) and starts ``flwr-serverapp`` / ``flwr-clientapp`` for each with ``--token TOKEN`` on its command line, where
every local user can read it (``/proc/PID/cmdline``); whoever holds a token acts as that app. This runs Flower's own
loop (``run_superexec``) with one part replaced, the executor that starts the app process:

- the token reaches the process on its standard input, an anonymous in-memory file (``memfd``) read through
  ``--token-file /dev/stdin``: never on a command line, never in a file with a name;
- with ``approved_apps`` (on a device), a task whose app bundle's hash is not in the owner's list is refused before
  any of its code runs: no process starts and the message goes unanswered (the server counts the device as failed
  when the round times out). Flower offers the task again every ~15 s until the message expires, and logs each
  refusal with its reason.

Replacing ``get_executor`` in Flower's module is the one place this touches Flower's internals;
``tests/test_task_launcher.py`` breaks if an upgrade moves it.

Run as ``python -m launch.task_launcher --help``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND
from flwr.supercore.superexec import run_superexec as flower_superexec
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

from launch.approved_apps import ApprovedAppsError, read_approved_apps

TOKEN_FILE = "/dev/stdin"


def app_command(spec: ExecutionSpec) -> list[str]:
    """The app process's command line: Flower's, with ``--token-file /dev/stdin`` instead of ``--token TOKEN``."""
    argv = [TASK_TYPE_TO_COMMAND[spec.task_type], TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
            spec.runtime_api_address, "--token-file", TOKEN_FILE]
    if spec.insecure:
        argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        argv += ["--parent-pid", str(spec.parent_pid)]
    return argv


def token_stdin(token: str) -> int:
    """A file descriptor of an anonymous in-memory file holding ``token``, rewound, for the child's stdin."""
    fd = os.memfd_create("flower-task-token")
    os.write(fd, token.encode("ascii"))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class PrivateTokenExecutor(SubprocessExecutor):
    """Starts app processes like Flower's ``SubprocessExecutor``, token on stdin, only approved bundles if asked."""

    def __init__(self, approved_apps: frozenset[str] | None = None) -> None:
        self.approved_apps = approved_apps

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Start the app process for ``spec``, or refuse it (nothing starts) if its bundle is not approved."""
        if self.approved_apps is not None and spec.fab_hash not in self.approved_apps:
            return LaunchResult.failed(f"its app bundle {spec.fab_hash or '(none)'} is not in this device's approved "
                                       "apps (--approved-apps); nothing was started.")  # Flower logs it as an error
        output = subprocess.DEVNULL if spec.suppress_output else None
        stdin = token_stdin(spec.token)
        try:
            subprocess.Popen(app_command(spec), stdin=stdin, stdout=output, stderr=output)  # noqa: S603
        finally:
            os.close(stdin)
        return LaunchResult.accepted()


def run(*, runtime_api_address: str, root_certificates: str | None, secret: bytes,
        approved_apps: frozenset[str] | None, parent_pid: int | None) -> None:
    """Run Flower's SuperExec loop with ``PrivateTokenExecutor`` (blocks until signalled or the parent exits)."""
    executor = PrivateTokenExecutor(approved_apps)
    flower_superexec.get_executor = lambda *args, **kwargs: executor
    flower_superexec.run_superexec(runtime_api_address=runtime_api_address, insecure=root_certificates is None,
                                   root_certificates_path=root_certificates, superexec_auth_secret=secret,
                                   parent_pid=parent_pid, runtime_dependency_install=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch.task_launcher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime-api-address", required=True, help="HOST:PORT of the Runtime API (loopback)")
    parser.add_argument("--root-certificates", help="CA of the Runtime API's TLS certificate (none: plain HTTP)")
    parser.add_argument("--secret-file", required=True, help="the SuperExec auth secret the SuperLink/SuperNode holds")
    parser.add_argument("--approved-apps", help="on a device: the file of approved app bundle hashes")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from flwr.supercore.utils import disable_process_dumping

    args = build_parser().parse_args(argv)
    try:
        approved = read_approved_apps(args.approved_apps) if args.approved_apps else None
        with open(args.secret_file, "rb") as handle:
            secret = handle.read()
        if not secret:
            raise OSError(f"--secret-file {args.secret_file} is empty; the SuperExec auth secret must not be.")
    except (ApprovedAppsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    disable_process_dumping(strict=False)  # as flower-superexec: no core dump or ptrace exposes the secret
    run(runtime_api_address=args.runtime_api_address, root_certificates=args.root_certificates, secret=secret,
        approved_apps=approved, parent_pid=args.parent_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
