"""Starting and stopping Flower's processes, and the ports they listen on.

Flower's processes spawn helpers that are not in their process group: the SuperLink starts a ``flower-superexec``
(its own session) that starts one ``flwr-serverapp`` per run; each SuperNode starts a ``flower-superexec`` that
starts one ``flwr-clientapp`` per message. Stopping a process therefore stops its whole tree, found through
``/proc`` before the first signal (once a parent is gone its children are re-parented and cannot be found).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


class PortInUseError(RuntimeError):
    """A port we were asked to listen on is taken; the message names the port and, if known, the process."""


class ProcessStartError(RuntimeError):
    """A process exited or never listened; the message holds the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on ``host`` right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _listener_of(port: int) -> str | None:
    """'pid N (cmd)' of the process listening on ``port``, when /proc lets us see it."""
    inodes = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = (PROC / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    for pid_dir in PROC.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                    return f"pid {pid_dir.name} ({cmd[:120]})"
        except OSError:
            continue
    return None


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Raise ``PortInUseError`` if ``port`` on ``host`` cannot be bound, naming who holds it when visible."""
    if not 0 < port < 65536:
        raise PortInUseError(f"{what}: port must be in 1..65535; found {port}.")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            owner = _listener_of(port)
            held = f" (held by {owner})" if owner else ""
            raise PortInUseError(
                f"{what}: port {port} on {host} is already in use{held}: {error.strerror}. Stop that process or choose "
                "another port."
            ) from None


def is_listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/*/stat)."""
    out = []
    for pid_dir in PROC.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            stat = (pid_dir / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(pid_dir.name))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before children."""
    found, frontier = [], [pid]
    while frontier:
        nxt = [child for parent in frontier for child in children(parent)]
        found += nxt
        frontier = nxt
    return found


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a zombie holds no memory, ports or files)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def command_line(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_tree(pid: int, *, timeout_s: float = 10.0) -> list[int]:
    """SIGTERM ``pid`` and its descendants, SIGKILL what is left after ``timeout_s``; returns survivors (none)."""
    tree = [pid] + descendants(pid)
    for member in tree:
        _signal(member, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(is_alive(p) for p in tree):
        time.sleep(0.1)
    tree += [d for p in tree if is_alive(p) for d in descendants(p) if d not in tree]  # spawned meanwhile
    for member in tree:
        if is_alive(member):
            _signal(member, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(is_alive(p) for p in tree):
        time.sleep(0.05)
    return [p for p in tree if is_alive(p)]


@dataclass
class ManagedProcess:
    """A Flower process we started: its Popen, its log file, and how to stop it with everything it spawned."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, *, timeout_s: float = 10.0) -> list[int]:
        """Stop the process tree and reap the process; returns pids that survived (empty on success)."""
        survivors = stop_tree(self.pid, timeout_s=timeout_s) if self.running() else []
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return survivors

    def wait_listening(self, host: str, port: int, *, timeout_s: float) -> None:
        """Return once ``host:port`` accepts connections.

        Raises:
            ProcessStartError: if the process exits first or the port is not open within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise ProcessStartError(f"{self.name} exited with code {self.popen.returncode} before listening on "
                                        f"{host}:{port}. Its log ({self.log_path}) ends:\n{self.log_tail()}")
            if is_listening(host, port):
                return
            time.sleep(0.2)
        raise ProcessStartError(f"{self.name} did not listen on {host}:{port} within {timeout_s:.0f} s. Its log "
                                f"({self.log_path}) ends:\n{self.log_tail()}")


def start(name: str, argv: Sequence[str], *, log_path: str | os.PathLike[str], env: Mapping[str, str],
          cwd: str | os.PathLike[str] | None = None) -> ManagedProcess:
    """Start ``argv`` in its own session with stdout and stderr appended to ``log_path``."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=dict(env), cwd=cwd, start_new_session=True)
    return ManagedProcess(name, popen, log_path)
