"""Checks of command-line values shared by ``python -m launch`` subcommands; a failed one is ``CannotStart``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

INSECURE_WARNING = ("WARNING: --insecure: traffic is not encrypted and nodes are not authenticated; anyone who can "
                    "reach the port can join or read updates. Use it only for a local test.")


class CannotStart(Exception):
    """A precondition failed; printed as 'error: ...' with exit code 2."""


def warn_insecure() -> None:
    print(INSECURE_WARNING, file=sys.stderr)


def flwr_home(args: argparse.Namespace) -> Path:
    """Flower's config folder: ``--flwr-home``, else $FLWR_HOME, else ~/.flwr."""
    return Path(args.flwr_home or os.environ.get("FLWR_HOME") or Path.home() / ".flwr").expanduser().resolve()


def existing_file(path: str | None, what: str) -> Path:
    """``path`` resolved, if it names a file; ``what`` names the flag in the error."""
    if not path:
        raise CannotStart(f"{what} is required (or pass --insecure for a local test).")
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise CannotStart(f"{what} {resolved} does not exist or is not a file.")
    return resolved


def host_port(address: str, flag: str = "--superlink") -> tuple[str, int]:
    """(host, port) of ``HOST:PORT``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CannotStart(f"{flag} {address!r} must be HOST:PORT with a port in 1..65535, e.g. 127.0.0.1:9093.")
    return host.strip("[]"), int(port)
