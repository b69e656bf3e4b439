"""launch/supervisor.py: a group of processes runs together and stops together (with whatever each spawned)."""

import os
import signal
import subprocess
import sys
import time

from launch.processes import descendants, is_alive
from launch.supervisor import Supervisor
from tests.helpers import ROOT

SLEEPER = [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
           "'import time; time.sleep(60)'], start_new_session=True); print('up', flush=True); time.sleep(60)"]


def _wait(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_when_one_child_exits_the_others_and_their_children_are_stopped_and_its_last_lines_are_seen():
    supervisor, seen = Supervisor(), []
    sleeper = supervisor.start("sleeper", SLEEPER, os.environ)
    assert _wait(lambda: len(descendants(sleeper.pid)) == 1)
    tree = [sleeper.pid, *descendants(sleeper.pid)]
    supervisor.start("quitter", [sys.executable, "-c", "print('[code: 2004] bye'); raise SystemExit(3)"], os.environ,
                     watch=seen.append)
    outcome = supervisor.wait()
    assert (outcome.exited, outcome.returncode) == ("quitter", 3)
    assert seen == ["[code: 2004] bye\n"]
    assert _wait(lambda: not any(is_alive(p) for p in tree))


def test_sigterm_stops_the_whole_group_and_exits_cleanly():
    code = ("import os, sys; from launch.supervisor import Supervisor; s = Supervisor(); "
            f"[s.start(n, {SLEEPER!r}, os.environ) for n in ('a', 'b')]; o = s.wait(); sys.exit(0 if o.exited is None else 9)")
    parent = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert _wait(lambda: len(descendants(parent.pid)) == 4)  # two children, each with its own child
    tree = descendants(parent.pid)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 0
    assert "a | up" in parent.stderr.read()
    assert _wait(lambda: not any(is_alive(p) for p in tree))
