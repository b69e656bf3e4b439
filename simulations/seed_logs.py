"""Device logs for a test federation: each node's SQLite log store filled with one synthetic user's events.

A real device fills its log as its user listens (``client.log_store``); for trying a deployment on one machine,
``seed_device_logs`` writes ``DIR/node-1/events.db``, ``DIR/node-2/events.db``, ... from ``simulations.population.population``
(user ``first_user + i`` for node ``i + 1``), in one transaction per log.

Run as ``python -m simulations.seed_logs --out DIR [--devices N ...]`` (``--help`` lists the flags). The deploy tool
(``python -m launch``) has no such subcommand: it is the operator's tool and knows nothing of synthetic users.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from client.log_store import LogStore
from simulations.population.population import Population, PopulationConfig

LOG_FILE = "events.db"


class SeedError(ValueError):
    """Logs that cannot be seeded as asked; names the file or value."""


@dataclass(frozen=True)
class SeededLog:
    name: str
    path: Path
    user_id: int
    events: int


def device_log_path(folder: str | os.PathLike[str], name: str) -> Path:
    """Where node ``name``'s log lives under ``folder``."""
    return Path(folder) / name / LOG_FILE


def seed_device_logs(folder: str | os.PathLike[str], *, devices: int, seed: int = 0, days: int = 21,
                     first_user: int = 0) -> list[SeededLog]:
    """Write ``devices`` log stores of synthetic users ``first_user ..``; nodes are named ``node-1`` ...

    Raises:
        SeedError: if ``devices`` < 1, ``days`` or the user ids are outside what ``simulations.population.population``
            generates, or a log already holds events (seeding twice would mix two users).
    """
    if devices < 1:
        raise SeedError(f"devices must be >= 1; found {devices}.")
    if first_user < 0:
        raise SeedError(f"first_user must be >= 0; found {first_user}.")
    try:
        config = PopulationConfig(seed=seed, num_users=first_user + devices, days=days)
    except ValueError as error:  # e.g. days=0: "days must be an integer in range [1, 366]. Found 0."
        raise SeedError(f"cannot seed logs: {error}") from None
    population = Population(config)
    seeded = []
    for i in range(devices):
        name, user_id = f"node-{i + 1}", first_user + i
        path = device_log_path(folder, name)
        with LogStore.open(path) as store:
            if store.count():
                raise SeedError(f"{path} already holds {store.count()} events; remove it to seed again.")
            stored = store.append_many(population.user(user_id).events())
        seeded.append(SeededLog(name, path, user_id, len(stored)))
    return seeded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simulations.seed_logs",
                                     description="Log stores of synthetic users, one per node (for trying a federation "
                                                 "on one machine).")
    parser.add_argument("--out", required=True, help="folder; writes OUT/node-1/events.db ...")
    parser.add_argument("--devices", type=int, default=3, help="how many nodes' logs to write (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic population (default: %(default)s)")
    parser.add_argument("--days", type=int, default=21, help="days of listening per user, 1 to 366 (default: %(default)s)")
    parser.add_argument("--first-user", type=int, default=0,
                        help="synthetic user of node-1; node-i gets user FIRST_USER + i - 1 (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m simulations.seed_logs --out DIR [--devices N --seed S --days D --first-user U]``; exit 2 with
    ``error: ...`` on logs that cannot be seeded."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out).expanduser().resolve()
    try:
        seeded = seed_device_logs(out, devices=args.devices, seed=args.seed, days=args.days,
                                  first_user=args.first_user)
    except SeedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for log in seeded:
        print(f"{log.name}: {log.events} events of synthetic user {log.user_id} in {log.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
