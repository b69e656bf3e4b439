"""``python -m simulations.summarize``: one truncated or foreign metrics.json is skipped and named, never fatal; the
strongest prompt-reading rule is in every row and on the plot, whose ε axis reads in plain numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from simulations.summarize import BASELINE_LINES, collect, figure, table
from tests.helpers import ROOT


def _metrics(target: float | None, top1: float) -> dict:
    user = None if target is None else {"target_epsilon": target, "epsilon": target * 0.99, "noise_multiplier": 1.1}
    return {"privacy": {"mode": "user" if user else "none", "user_level": user},
            "rounds": [{"round": 1}], "final": {"eval_top1": top1, "eval_nll": 1.9,
                                                 "baselines": {"user_recent_most_frequent": 0.4,
                                                               "named_else_recent": 0.45,
                                                               "central_nonprivate": None,
                                                               "global_most_popular": 0.2}}}


def _write(root: Path, name: str, content: str) -> Path:
    path = root / name / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    return path


def _summarize(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations.summarize", str(root)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_truncated_or_foreign_metrics_file_is_skipped_and_named_and_the_rest_tabulated(tmp_path):
    _write(tmp_path, "0_eps1", json.dumps(_metrics(1.0, 0.21)))
    _write(tmp_path, "1_eps8", json.dumps(_metrics(8.0, 0.31)))
    cut = _write(tmp_path, "2_cut", json.dumps(_metrics(4.0, 0.3))[:40])
    foreign = _write(tmp_path, "3_other", json.dumps({"loss": [1, 2, 3]}))
    wrong = _write(tmp_path, "4_wrong", json.dumps(_metrics(2.0, 0.2)).replace("0.2,", '"high",', 1))
    run = _summarize(tmp_path)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "0_eps1" in run.stdout and "1_eps8" in run.stdout and "2_cut" not in run.stdout
    for path in (cut, foreign, wrong):
        assert f"skipped {path}" in run.stderr
    assert len(json.loads((tmp_path / "summary.json").read_text())) == 2
    assert (tmp_path / "privacy_utility.png").exists()


def test_only_bad_files_is_exit_2_naming_them(tmp_path):
    bad = _write(tmp_path, "run", "{")
    run = _summarize(tmp_path)
    assert run.returncode == 2 and f"skipped {bad}" in run.stderr and "no readable metrics.json" in run.stderr


def test_the_strongest_rule_is_in_every_row_the_table_and_the_plot(tmp_path):
    for name, target, top1 in (("0_eps2", 2.0, 0.30), ("1_eps4", 4.0, 0.33), ("2_eps8", 8.0, 0.36)):
        _write(tmp_path, name, json.dumps(_metrics(target, top1)))
    rows, skipped = collect(tmp_path)
    assert not skipped and [r["named_else_recent"] for r in rows] == [0.45, 0.45, 0.45]
    header = table(rows).splitlines()[0].split()
    assert "named_else_recent" in header
    (label,) = [label for key, label, _, _ in BASELINE_LINES if key == "named_else_recent"]
    fig = figure(rows)
    ax = fig.axes[0]
    assert label in ax.get_legend_handles_labels()[1]
    assert any(list(line.get_ydata()) == [0.45, 0.45] for line in ax.get_lines())  # the rule's line, at its top-1


def test_a_run_from_before_the_rule_was_recorded_is_still_tabulated_without_it(tmp_path):
    metrics = _metrics(2.0, 0.3)
    del metrics["final"]["baselines"]["named_else_recent"]
    _write(tmp_path, "old", json.dumps(metrics))
    rows, skipped = collect(tmp_path)
    assert not skipped and rows[0]["named_else_recent"] is None


def test_the_epsilon_axis_reads_in_plain_numbers(tmp_path):
    for name, target in (("0_eps1", 1.0), ("1_eps2", 2.0), ("2_eps4", 4.0), ("3_eps8", 8.0)):
        _write(tmp_path, name, json.dumps(_metrics(target, 0.3)))
    fig = figure(collect(tmp_path)[0])
    fig.canvas.draw()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "8"]  # spent 0.99·target, ticked at target
    assert all(t.get_text() == "" for t in ax.get_xticklabels(minor=True))  # no "2×10⁰" between them
