"""Our SuperExec (launch/task_launcher.py): the task token travels on stdin, unapproved bundles never start, and the
one hook into Flower's internals is still where we use it (this breaks on an upgrade that moves it).

The live checks (no token on any command line during a real run; a foreign bundle refused on real devices) are in
tests/test_deployment.py.
"""

import inspect
import os
import subprocess
import sys

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec as flower_superexec
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus

from launch.processes import descendants
from launch.task_launcher import PrivateTokenExecutor, app_command, token_stdin

TOKEN = "ab" * 128


def _spec(fab_hash="f" * 64, task_type=TaskType.CLIENT_APP) -> ExecutionSpec:
    return ExecutionSpec(task_type=task_type, runtime_api_address="127.0.0.1:9094", token=TOKEN, insecure=True,
                         root_certificates_path=None, runtime_dependency_install=False, parent_pid=1,
                         suppress_output=False, task_id=7, fab_hash=fab_hash)


def test_flowers_superexec_still_takes_its_executor_from_get_executor():
    assert callable(flower_superexec.get_executor)
    source = inspect.getsource(flower_superexec.run_superexec)
    assert "get_executor(" in source and "plugin.launch_task(" in source
    assert {"token", "fab_hash", "task_type", "suppress_output"} <= set(inspect.signature(ExecutionSpec).parameters)


def test_the_app_command_line_names_no_token():
    argv = app_command(_spec())
    assert argv[:5] == ["flwr-clientapp", "--runtime-api-address", "127.0.0.1:9094", "--token-file", "/dev/stdin"]
    assert TOKEN not in " ".join(argv) and "--token" not in argv


def test_flowers_token_reader_gets_the_token_from_stdin_and_the_command_line_never_holds_it():
    code = ("import argparse, os; from flwr.common.args import add_args_flwr_app_common, try_obtain_flwr_app_token; "
            "p = argparse.ArgumentParser(); add_args_flwr_app_common(p); "
            "token = try_obtain_flwr_app_token(p.parse_args(['--token-file', '/dev/stdin', '--insecure'])); "
            "print(token); print(open(f'/proc/{os.getpid()}/cmdline', 'rb').read().decode())")
    stdin = token_stdin(TOKEN)
    try:
        result = subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True, text=True, timeout=120)
    finally:
        os.close(stdin)
    token, cmdline = result.stdout.splitlines()[:2]
    assert result.returncode == 0 and token == TOKEN and TOKEN not in cmdline
    assert not any(name.startswith("flower-task-token") for name in os.listdir("/dev/shm"))  # no named file


def test_a_bundle_the_device_did_not_approve_is_refused_before_anything_starts():
    executor = PrivateTokenExecutor(approved_apps=frozenset({"a" * 64}))
    before = descendants(os.getpid())
    for spec in (_spec(fab_hash="b" * 64), _spec(fab_hash=None)):
        result = executor.launch(spec)
        assert result.status == LaunchResultStatus.FAILED
        assert "is not in this device's approved apps" in result.message and "nothing was started" in result.message
    assert descendants(os.getpid()) == before
