"""Privacy-utility table across runs: ``python -m simulations.summarize DIR``.

DIR is a Hydra multirun directory (e.g. from ``python -m simulations.run -m privacy.target_epsilon=1,2,4,8``) or any
directory tree holding ``metrics.json`` files. Prints one row per run (sorted by target epsilon) and writes
``summary.json`` and ``privacy_utility.png`` (held-out top-1 against spent epsilon, baselines as lines) into DIR.
The baselines include the strongest prompt-reading rule, ``named_else_recent`` (the genre the prompt names, else the
user's recent favourite: ``simulations.federation.references``), next to the recent-favourite rule, so a sweep shows how far the model
is from the rule it must beat. The log ε axis is labelled in plain numbers (1, 2, 4, 8).
A metrics.json that cannot be read as a run's (truncated, another program's) is skipped and named on stderr; the
exit code is then 1 (2 if no run was readable).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

from privacy.randomness import SEEDED_WARNING

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter  # noqa: E402

COLUMNS = ("run", "mode", "target_eps", "epsilon", "z", "rounds", "top1", "nll", "recent_mode", "named_else_recent",
           "central")


NUMBERS = ("target_eps", "epsilon", "z", "top1", "nll", "recent_mode", "named_else_recent", "central", "global_mode")
BASELINE_LINES = (
    ("central", "central non-private", "--", "gray"),
    ("named_else_recent", "prompt's genre, else recent favourite (strongest rule)", "-", "tab:red"),
    ("recent_mode", "user's most frequent recent genre", ":", "gray"),
    ("global_mode", "global most popular", "-.", "gray"),
)
"""Each baseline's row key, legend label, line style and colour in privacy_utility.png."""


def collect(root: Path) -> tuple[list[dict], list[str]]:
    """One row per readable ``metrics.json`` under ``root``, and one "skipped PATH: reason" per other one.

    A run killed while writing, or a metrics.json of another program, must not abort the table of the others.
    """
    rows, skipped = [], []
    for path in sorted(root.rglob("metrics.json")):
        try:
            rows.append(_row(path, root))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            reason = f"{type(error).__name__}: {error}" if isinstance(error, (KeyError, AttributeError)) else error
            skipped.append(f"skipped {path}: not a run's metrics.json ({reason})")
    rows.sort(key=lambda r: (r["target_eps"] is None, r["target_eps"] or 0.0))
    return rows, skipped


def _row(path: Path, root: Path) -> dict:
    """The table row of one run's metrics; raises on a file that is not one (see ``collect``)."""
    metrics = json.loads(path.read_text(encoding="utf-8"))
    user = metrics["privacy"].get("user_level") or {}
    baselines = metrics["final"]["baselines"]
    row = {
        "run": str(path.parent.relative_to(root)) or ".",
        "mode": str(metrics["privacy"]["mode"]),
        "noise": metrics["privacy"].get("noise"),  # "seeded" runs are labelled below the table
        "target_eps": user.get("target_epsilon"),
        "epsilon": user.get("epsilon"),
        "z": user.get("noise_multiplier"),
        "rounds": len(metrics["rounds"]),
        "top1": metrics["final"]["eval_top1"],
        "nll": metrics["final"]["eval_nll"],
        "recent_mode": baselines.get("user_recent_most_frequent"),
        "named_else_recent": baselines.get("named_else_recent"),  # absent in runs from before it was recorded
        "central": baselines.get("central_nonprivate"),
        "global_mode": baselines.get("global_most_popular"),
    }
    for key in NUMBERS:
        value = row[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{key} must be a number or null; found {value!r}")
    if row["top1"] is None:
        raise ValueError("final.eval_top1 is missing")
    return row


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def table(rows: list[dict]) -> str:
    cells = [[_cell(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


MAX_TICKS = 8


def epsilon_ticks(epsilons: list[float]) -> list[float]:
    """Powers of two from the smallest positive finite ε to the largest, each rounded out to a power (every other
    power, or fewer, past ``MAX_TICKS``): the log axis's labelled ticks; [] when no ε is positive and finite."""
    shown = [e for e in epsilons if 0.0 < e < math.inf]
    if not shown:
        return []
    # a run spends up to 1 % under its target (the calibration's tolerance): ε 0.99 sits at the tick 1, not above 0.5
    low = math.floor(math.log2(min(shown) * 1.02))
    high = max(math.ceil(math.log2(max(shown) / 1.02)), low + 1)
    step = math.ceil((high - low + 1) / MAX_TICKS)
    return [2.0**k for k in range(low, high + step, step)]


def figure(rows: list[dict]) -> Figure:
    """Held-out top-1 against spent ε (log axis, ticks in plain numbers), each baseline a horizontal line."""
    private = [r for r in rows if r["epsilon"] is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    if private:
        ax.plot([r["epsilon"] for r in private], [r["top1"] for r in private], marker="o", label="user-level DP global model")
        ax.set_xscale("log")
        ticks = epsilon_ticks([r["epsilon"] for r in private])
        if ticks:
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # "2", not LogFormatter's "2×10⁰"
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(ticks[0] / 1.15, ticks[-1] * 1.15)
    for key, label, style, colour in BASELINE_LINES:
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            ax.axhline(sum(values) / len(values), ls=style, lw=1, color=colour, label=label)
    for r in rows:
        if r["epsilon"] is None:
            ax.axhline(r["top1"], ls="-", lw=1, color="green", label=f"no user-level DP ({r['mode']})")
    ax.set_xlabel("user-level ε spent (log scale)")
    ax.set_ylabel("held-out top-1 (next kept genre)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot(rows: list[dict], path: Path) -> None:
    fig = figure(rows)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.summarize",
        description="Tabulate held-out accuracy against privacy budget for every metrics.json under DIR.",
        epilog="example: python -m simulations.run -m privacy.target_epsilon=1,2,4,8 && "
               "python -m simulations.summarize multirun/2026-11-24/13-00-00",
    )
    parser.add_argument("dir", type=Path, help="a Hydra multirun directory, or any folder of runs")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"error: {args.dir} is not a directory; pass the folder a multirun wrote (see its first lines).", file=sys.stderr)
        return 2
    rows, skipped = collect(args.dir)
    for line in skipped:
        print(line, file=sys.stderr)
    if not rows:
        print(f"error: no readable metrics.json under {args.dir}; did the runs finish?", file=sys.stderr)
        return 2
    print(table(rows))
    if any(r["noise"] == "seeded" for r in rows):
        print(f"runs with privacy.noise=seeded: {SEEDED_WARNING}")
    (args.dir / "summary.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.dir / "privacy_utility.png")
    print(f"wrote {args.dir / 'summary.json'} and {args.dir / 'privacy_utility.png'}")
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
