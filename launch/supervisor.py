"""Keep a group of processes running together in the foreground, and stop them together.

``launch superlink`` runs the SuperLink, its task launcher and the proxy; ``launch supernode`` runs the SuperNode and
its task launcher. Each child gets its own session (so Ctrl-C reaches only us) and its output is copied to our
stderr, each line prefixed with the child's name, through an optional watcher that can diagnose it. When a child
exits, or on SIGINT/SIGTERM, every child is stopped with all it spawned (``launch.processes.stop_tree``), last
started first.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from launch.processes import stop_tree

LineWatcher = Callable[[str], None]


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    copier: threading.Thread


@dataclass(frozen=True)
class Outcome:
    """How the group ended: ``exited`` names the child that exited first (None: we were signalled)."""

    exited: str | None
    returncode: int | None


class Supervisor:
    """Start children, wait for the first to exit or a signal, then stop them all."""

    def __init__(self) -> None:
        """Take over SIGINT and SIGTERM at once (until ``wait`` returns): a Ctrl-C while children start stops them too."""
        self.children: list[Child] = []
        self._signalled = threading.Event()
        self._previous = {sig: signal.signal(sig, lambda *_: self._signalled.set())
                          for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str], *,
              watch: LineWatcher | None = None) -> subprocess.Popen:
        """Start ``argv`` in its own session; copy its output (stdout and stderr) to ours, through ``watch``."""
        print("$ " + " ".join(map(str, argv)), file=sys.stderr, flush=True)
        popen = subprocess.Popen(list(map(str, argv)), env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        copier = threading.Thread(target=_copy_lines, args=(name, popen, watch), daemon=True)
        copier.start()
        self.children.append(Child(name, popen, copier))
        return popen

    def running(self) -> bool:
        """No child has exited and no signal came."""
        return not self._signalled.is_set() and all(child.popen.poll() is None for child in self.children)

    def wait(self, poll_s: float = 0.2) -> Outcome:
        """Block until a child exits or SIGINT/SIGTERM arrives; stop every child; say which ended it."""
        try:
            while not self._signalled.is_set():
                for child in self.children:
                    if child.popen.poll() is not None:
                        child.copier.join(timeout=5)  # its last lines (and the watcher's verdict) first
                        self.stop()
                        return Outcome(child.name, child.popen.returncode)
                time.sleep(poll_s)
            self.stop()
            return Outcome(None, None)
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Stop every child and everything it spawned, last started first."""
        for child in reversed(self.children):
            if child.popen.poll() is None:
                stop_tree(child.popen.pid)
            try:
                child.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _copy_lines(name: str, popen: subprocess.Popen, watch: LineWatcher | None) -> None:
    for line in popen.stdout or []:
        sys.stderr.write(f"{name} | {line}")
        sys.stderr.flush()
        if watch is not None:
            watch(line)
